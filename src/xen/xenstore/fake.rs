//! An in-memory `xenstored` on a unix socket, for tests.
//!
//! It follows `docs/misc/xenstore.txt` for what clients see: relative
//! paths live under `/local/domain/0` (every client is dom0); `WRITE` and
//! `MKDIR` create missing parents; `RM` of a missing node succeeds when
//! its parent exists; `WATCH` fires once right after its `OK`; changes
//! fire the watches on the node and its ancestors, and are queued to the
//! watchers before the writer gets its reply (so a client sees an event
//! between its request and the reply, as the lab capture shows);
//! transactions work on a private copy and fail with `EAGAIN` when the
//! store changed meanwhile. Permissions are stored and inherited from the
//! parent but not enforced. Not implemented: quotas, `@introduceDomain`
//! events, `XS_SET_TARGET`/`XS_INTRODUCE` and friends (they get
//! `EINVAL`).

use xendm_devices::sync::lock;

use super::wire::{Header, Op, Perm, HEADER_LEN, XENSTORE_PAYLOAD_MAX};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const HOME: &str = "/local/domain/0";

#[derive(Clone)]
struct Node {
    value: Vec<u8>,
    perms: Vec<Perm>,
}

struct WatchReg {
    conn: u64,
    /// As the client gave it (relative or absolute).
    path: String,
    abs: String,
    token: String,
}

struct Tx {
    conn: u64,
    base_generation: u64,
    nodes: BTreeMap<String, Node>,
    changed: Vec<String>,
}

struct Store {
    nodes: BTreeMap<String, Node>,
    generation: u64,
    watches: Vec<WatchReg>,
    conns: HashMap<u64, UnixStream>,
    txs: HashMap<u32, Tx>,
    next_tx: u32,
    /// Every request seen: (type name, tx id, payload as text).
    log: Vec<(String, u32, String)>,
}

type Reply = Result<Vec<u8>, &'static str>;

/// A fake xenstored serving a unix socket.
pub struct FakeXenstored {
    path: PathBuf,
    store: Arc<Mutex<Store>>,
    stop: Arc<AtomicBool>,
    /// While set, requests are held unanswered (a hung xenstored).
    hang: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeXenstored {
    /// Listens on `socket_path` (which must not exist). The tree starts
    /// with `/local/domain/0/domid` = `0`, like a real dom0.
    pub fn start(socket_path: &Path) -> io::Result<FakeXenstored> {
        let listener = UnixListener::bind(socket_path)?;
        let mut nodes = BTreeMap::new();
        let root_perms = vec![Perm::new(super::Access::None, 0)];
        nodes.insert("/".to_owned(), Node { value: Vec::new(), perms: root_perms });
        let store = Arc::new(Mutex::new(Store {
            nodes,
            generation: 0,
            watches: Vec::new(),
            conns: HashMap::new(),
            txs: HashMap::new(),
            next_tx: 1,
            log: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let hang = Arc::new(AtomicBool::new(false));
        let mut fake = FakeXenstored { path: socket_path.to_owned(), store, stop, hang, acceptor: None };
        fake.write("/local/domain/0/domid", "0");
        let (store, stop, hang) = (Arc::clone(&fake.store), Arc::clone(&fake.stop), Arc::clone(&fake.hang));
        let acceptor = std::thread::Builder::new()
            .name("fake-xenstored".into())
            .spawn(move || accept_loop(listener, store, stop, hang))?;
        fake.acceptor = Some(acceptor);
        Ok(fake)
    }

    /// The socket path (for [`super::XenStore::connect_unix`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value at an absolute path, if the node exists.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        lock(&self.store).nodes.get(path).map(|n| n.value.clone())
    }

    /// The permissions of an absolute path, if the node exists.
    pub fn perms(&self, path: &str) -> Option<Vec<Perm>> {
        lock(&self.store).nodes.get(path).map(|n| n.perms.clone())
    }

    /// Writes as another party would (fires watches).
    pub fn write(&self, path: &str, value: &str) {
        let mut st = lock(&self.store);
        st.generation += 1;
        let nodes = &mut st.nodes;
        write_node(nodes, path, value.as_bytes());
        fire(&mut st, path);
    }

    /// Removes a subtree as another party would (fires watches).
    pub fn rm(&self, path: &str) {
        let mut st = lock(&self.store);
        st.generation += 1;
        remove_subtree(&mut st.nodes, path);
        fire(&mut st, path);
    }

    /// Every request served so far: (type, tx id, payload with NULs
    /// shown as `|`).
    pub fn log(&self) -> Vec<(String, u32, String)> {
        lock(&self.store).log.clone()
    }

    /// Hangs (`true`: requests are read but held unanswered, as by a
    /// xenstored that stopped responding) or resumes (`false`: the held
    /// requests are answered in order).
    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }

    /// Closes every client connection (clients see EOF).
    pub fn disconnect_all(&self) {
        let mut st = lock(&self.store);
        for (_, c) in st.conns.drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for FakeXenstored {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.hang.store(false, Ordering::SeqCst);
        // Unblock accept().
        let _ = UnixStream::connect(&self.path);
        self.disconnect_all();
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, store: Arc<Mutex<Store>>, stop: Arc<AtomicBool>, hang: Arc<AtomicBool>) {
    let mut next_conn = 0u64;
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(writer) = stream.try_clone() else {
            continue;
        };
        next_conn += 1;
        let conn = next_conn;
        lock(&store).conns.insert(conn, writer);
        let (store, hang) = (Arc::clone(&store), Arc::clone(&hang));
        let _ = std::thread::Builder::new()
            .name(format!("fake-xenstored-{conn}"))
            .spawn(move || serve_conn(conn, stream, store, &hang));
    }
}

fn serve_conn(conn: u64, mut stream: UnixStream, store: Arc<Mutex<Store>>, hang: &AtomicBool) {
    let mut header = [0u8; HEADER_LEN];
    loop {
        if stream.read_exact(&mut header).is_err() {
            break;
        }
        let Some(h) = Header::parse(&header) else {
            break;
        };
        if h.len as usize > XENSTORE_PAYLOAD_MAX {
            break; // xenstored drops such a connection
        }
        let mut payload = vec![0u8; h.len as usize];
        if stream.read_exact(&mut payload).is_err() {
            break;
        }
        while hang.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut st = lock(&store);
        st.log.push((
            Op::from_code(h.ty).map_or_else(|| h.ty.to_string(), |op| op.name().to_owned()),
            h.tx_id,
            String::from_utf8_lossy(&payload).replace('\0', "|"),
        ));
        let reply = handle(&mut st, conn, h, &payload);
        let (ty, body) = match reply {
            Ok(body) => (h.ty, body),
            Err(errno) => (Op::Error.code(), format!("{errno}\0").into_bytes()),
        };
        let len = u32::try_from(body.len()).unwrap_or(0);
        send(&mut st, conn, Header { ty, req_id: h.req_id, tx_id: h.tx_id, len }, &body);
        // The initial event of a new watch follows its OK.
        if h.ty == Op::Watch.code() && ty == Op::Watch.code() {
            if let Some(w) = st.watches.iter().rev().find(|w| w.conn == conn) {
                let ev = event_payload(&w.path, &w.token);
                send_event(&mut st, conn, &ev);
            }
        }
    }
    let mut st = lock(&store);
    st.conns.remove(&conn);
    st.watches.retain(|w| w.conn != conn);
    st.txs.retain(|_, t| t.conn != conn);
}

fn send(st: &mut Store, conn: u64, h: Header, body: &[u8]) {
    if let Some(s) = st.conns.get_mut(&conn) {
        let mut msg = h.to_bytes().to_vec();
        msg.extend_from_slice(body);
        let _ = s.write_all(&msg);
    }
}

fn send_event(st: &mut Store, conn: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(0);
    send(st, conn, Header { ty: Op::WatchEvent.code(), req_id: 0, tx_id: 0, len }, payload);
}

fn event_payload(path: &str, token: &str) -> Vec<u8> {
    format!("{path}\0{token}\0").into_bytes()
}

/// Makes a client path absolute, or `EINVAL`.
fn resolve(path: &str) -> Result<String, &'static str> {
    let ok_chars = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b));
    if path.is_empty() || !ok_chars || path.contains("//") || (path.len() > 1 && path.ends_with('/')) {
        return Err("EINVAL");
    }
    Ok(if path.starts_with('/') { path.to_owned() } else { format!("{HOME}/{path}") })
}

fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => path.get(..i),
        None => None,
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    path == dir || dir == "/" || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// Creates `path` and missing ancestors; new nodes inherit the parent's
/// permissions. Returns whether `path` was created.
fn create(nodes: &mut BTreeMap<String, Node>, path: &str) -> bool {
    if nodes.contains_key(path) {
        return false;
    }
    if let Some(p) = parent(path) {
        create(nodes, p);
    }
    let perms = parent(path).and_then(|p| nodes.get(p)).map(|n| n.perms.clone()).unwrap_or_default();
    nodes.insert(path.to_owned(), Node { value: Vec::new(), perms });
    true
}

fn write_node(nodes: &mut BTreeMap<String, Node>, path: &str, value: &[u8]) {
    create(nodes, path);
    if let Some(n) = nodes.get_mut(path) {
        n.value = value.to_vec();
    }
}

fn remove_subtree(nodes: &mut BTreeMap<String, Node>, path: &str) {
    nodes.retain(|k, _| !is_under(k, path) || path == "/" && k == "/");
}

fn children(nodes: &BTreeMap<String, Node>, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for key in nodes.keys() {
        let rest =
            if path == "/" { key.strip_prefix('/') } else { key.strip_prefix(path).and_then(|r| r.strip_prefix('/')) };
        if let Some(name) = rest {
            if !name.is_empty() && !name.contains('/') {
                out.extend_from_slice(name.as_bytes());
                out.push(0);
            }
        }
    }
    out
}

/// Queues events for a change at `abs` to every interested watch: those
/// on `abs` or an ancestor (event path `abs`) and, for removals, those
/// below it (event path = the watch's own path).
fn fire(st: &mut Store, abs: &str) {
    let mut events = Vec::new();
    for w in &st.watches {
        let path = if is_under(abs, &w.abs) {
            abs.to_owned()
        } else if is_under(&w.abs, abs) {
            w.abs.clone()
        } else {
            continue;
        };
        // Relative watches get relative event paths.
        let shown = if w.path.starts_with('/') {
            path
        } else {
            path.strip_prefix(HOME).and_then(|r| r.strip_prefix('/')).map_or(path.clone(), str::to_owned)
        };
        events.push((w.conn, event_payload(&shown, &w.token)));
    }
    for (conn, ev) in events {
        send_event(st, conn, &ev);
    }
}

fn strings(payload: &[u8]) -> Vec<String> {
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    body.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

fn first_string(payload: &[u8]) -> String {
    strings(payload).into_iter().next().unwrap_or_default()
}

fn handle(st: &mut Store, conn: u64, h: Header, payload: &[u8]) -> Reply {
    let Some(op) = Op::from_code(h.ty) else {
        return Err("EINVAL");
    };
    if let Some(reply) = connection_op(st, conn, op, &h, payload) {
        return reply;
    }
    // Node operations, inside a transaction or not.
    let in_tx = h.tx_id != 0;
    if in_tx && st.txs.get(&h.tx_id).is_none_or(|t| t.conn != conn) {
        return Err("ENOENT");
    }
    let (path_bytes, rest) = match payload.iter().position(|&b| b == 0) {
        Some(i) => (payload.get(..i).unwrap_or_default(), payload.get(i + 1..).unwrap_or_default()),
        None => (payload, &[][..]),
    };
    let abs = resolve(&String::from_utf8_lossy(path_bytes))?;
    let mut changed = None;
    let result = {
        let nodes = if in_tx {
            match st.txs.get_mut(&h.tx_id) {
                Some(t) => &mut t.nodes,
                None => return Err("ENOENT"),
            }
        } else {
            &mut st.nodes
        };
        node_op(nodes, op, &abs, rest, &mut changed)
    };
    if let Some(path) = changed {
        if in_tx {
            if let Some(t) = st.txs.get_mut(&h.tx_id) {
                t.changed.push(path);
            }
        } else {
            st.generation += 1;
            fire(st, &path);
        }
    }
    result
}

/// Transactions, watches and domain paths: the operations on the
/// connection rather than on one node (None for a node operation).
fn connection_op(st: &mut Store, conn: u64, op: Op, h: &Header, payload: &[u8]) -> Option<Reply> {
    let ok = || Ok(b"OK\0".to_vec());
    Some(match op {
        Op::TransactionStart => {
            let id = st.next_tx;
            st.next_tx += 1;
            let tx = Tx { conn, base_generation: st.generation, nodes: st.nodes.clone(), changed: Vec::new() };
            st.txs.insert(id, tx);
            Ok(format!("{id}\0").into_bytes())
        }
        Op::TransactionEnd => end_transaction(st, conn, h.tx_id, payload),
        Op::Watch => {
            let args = strings(payload);
            let (Some(path), Some(token)) = (args.first(), args.get(1)) else {
                return Some(Err("EINVAL"));
            };
            let abs = if path.starts_with('@') { Ok(path.clone()) } else { resolve(path) };
            match abs {
                Err(e) => Err(e),
                Ok(_) if st.watches.iter().any(|w| w.conn == conn && w.path == *path && w.token == *token) => {
                    Err("EEXIST")
                }
                Ok(abs) => {
                    st.watches.push(WatchReg { conn, path: path.clone(), abs, token: token.clone() });
                    ok()
                }
            }
        }
        Op::Unwatch => {
            let args = strings(payload);
            let (Some(path), Some(token)) = (args.first(), args.get(1)) else {
                return Some(Err("EINVAL"));
            };
            let before = st.watches.len();
            st.watches.retain(|w| !(w.conn == conn && w.path == *path && w.token == *token));
            if st.watches.len() == before {
                Err("ENOENT")
            } else {
                ok()
            }
        }
        Op::GetDomainPath => match first_string(payload).parse::<u32>() {
            Ok(domid) => Ok(format!("/local/domain/{domid}\0").into_bytes()),
            Err(_) => Err("EINVAL"),
        },
        _ => return None,
    })
}

fn end_transaction(st: &mut Store, conn: u64, tx_id: u32, payload: &[u8]) -> Reply {
    let Some(tx) = st.txs.remove(&tx_id) else {
        return Err("ENOENT");
    };
    if tx.conn != conn {
        return Err("ENOENT");
    }
    match first_string(payload).as_str() {
        "F" => return Ok(b"OK\0".to_vec()),
        "T" => {}
        _ => return Err("EINVAL"),
    }
    if tx.base_generation != st.generation {
        return Err("EAGAIN");
    }
    st.nodes = tx.nodes;
    st.generation += 1;
    for p in tx.changed {
        fire(st, &p);
    }
    Ok(b"OK\0".to_vec())
}

/// One operation on the node at `abs`; `changed` names it if it changed.
fn node_op(nodes: &mut BTreeMap<String, Node>, op: Op, abs: &str, rest: &[u8], changed: &mut Option<String>) -> Reply {
    let ok = || Ok(b"OK\0".to_vec());
    match op {
        Op::Read => nodes.get(abs).map(|n| n.value.clone()).ok_or("ENOENT"),
        Op::Directory => {
            if nodes.contains_key(abs) {
                Ok(children(nodes, abs))
            } else {
                Err("ENOENT")
            }
        }
        Op::GetPerms => match nodes.get(abs) {
            Some(n) => Ok(n.perms.iter().flat_map(|p| format!("{p}\0").into_bytes()).collect()),
            None => Err("ENOENT"),
        },
        Op::Write => {
            write_node(nodes, abs, rest);
            *changed = Some(abs.to_string());
            ok()
        }
        Op::Mkdir => {
            if create(nodes, abs) {
                *changed = Some(abs.to_string());
            }
            ok()
        }
        Op::Rm => {
            if nodes.contains_key(abs) {
                remove_subtree(nodes, abs);
                *changed = Some(abs.to_string());
                ok()
            } else if parent(abs).is_some_and(|p| nodes.contains_key(p)) {
                ok()
            } else {
                Err("ENOENT")
            }
        }
        Op::SetPerms => {
            let perms: Result<Vec<Perm>, _> = strings(rest).iter().map(|s| s.parse::<Perm>()).collect();
            match (perms, nodes.get_mut(abs)) {
                (Ok(p), _) if p.is_empty() => Err("EINVAL"),
                (Err(_), _) => Err("EINVAL"),
                (Ok(_), None) => Err("ENOENT"),
                (Ok(p), Some(n)) => {
                    n.perms = p;
                    *changed = Some(abs.to_string());
                    ok()
                }
            }
        }
        _ => Err("EINVAL"),
    }
}
