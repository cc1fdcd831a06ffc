fn main() {
    eprintln!("testbed: not implemented yet");
    std::process::exit(2);
}
