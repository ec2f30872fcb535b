//! Option ROMs built from source (filled in by the ROM work).
