fn main() {
    eprintln!("bench: not implemented yet");
    std::process::exit(2);
}
