//! `cargo fuzz run control`: see `dataplane::fuzzing::control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::control(data);
});
