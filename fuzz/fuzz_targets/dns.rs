//! `cargo fuzz run dns`: see `dataplane::fuzzing::dns`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::dns(data);
});
