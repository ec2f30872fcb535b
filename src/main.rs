fn main() {
    println!("xendm");
}
