//! `cargo fuzz run gossip`: see `dataplane::fuzzing::gossip`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::gossip(data);
});
