//! Writes each fuzz target's seeds (`dataplane::fuzzing::seeds`) to `DIR/<target>/seed-N`:
//! `cargo run -p dataplane --features testkit --example fuzz_seeds -- DIR` (scripts/fuzz.sh).
fn main() -> std::io::Result<()> {
    let usage = "usage: fuzz_seeds DIR (writes DIR/<target>/seed-N for each fuzz target)";
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    if dir.starts_with('-') {
        // `--help` and the like: not a directory to fill.
        eprintln!("{usage}");
        std::process::exit(if dir == "--help" || dir == "-h" { 0 } else { 2 });
    }
    for target in dataplane::fuzzing::TARGETS {
        let d = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&d)?;
        for (i, s) in dataplane::fuzzing::seeds(target).iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), s)?;
        }
    }
    Ok(())
}
