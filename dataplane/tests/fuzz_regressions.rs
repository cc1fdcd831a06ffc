//! Every input kept under `fuzz/regressions/<target>/` (a crash a fuzz target once found) and
//! every seed, through its target's function (`dataplane::fuzzing`): a fixed crash stays fixed.
//! The fuzzing itself runs in `scripts/fuzz.sh`, from `./test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use dataplane::fuzzing;

#[test]
fn every_kept_crash_and_every_seed_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut kept = 0;
    for target in fuzzing::TARGETS {
        let dir = root.join(target);
        assert!(dir.is_dir(), "{} is missing", dir.display());
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            eprintln!("{target}: {name}");
            fuzzing::run(target, &std::fs::read(&p).unwrap());
            kept += 1;
        }
        let seeds = fuzzing::seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        for s in seeds {
            fuzzing::run(target, &s);
        }
    }
    eprintln!("{kept} kept crashes replayed");
}

#[test]
fn the_seeds_are_inputs_each_target_takes_in() {
    use dataplane::host::{dns, gossip};
    for s in fuzzing::seeds("dns") {
        assert!(dns::parse_query(&s).is_ok());
    }
    for s in fuzzing::seeds("gossip") {
        assert!(gossip::decode(&s).is_some());
    }
    for s in fuzzing::seeds("control") {
        assert!(
            ctl::proto::parse_request(s.trim_ascii_end()).is_ok(),
            "{}",
            String::from_utf8_lossy(&s)
        );
    }
    for s in fuzzing::seeds("state") {
        let p: dataplane::control::Persisted = serde_json::from_slice(&s).unwrap();
        ctl::validate::validate(&p.state).unwrap();
    }
}
