//! `cargo fuzz run state`: see `dataplane::fuzzing::state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::state(data);
});
