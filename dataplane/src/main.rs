fn main() {
    eprintln!("meshd: the daemon is not implemented yet (see issue 3)");
    std::process::exit(2);
}
