fn main() {
    eprintln!("meshctl: not implemented yet");
    std::process::exit(2);
}
