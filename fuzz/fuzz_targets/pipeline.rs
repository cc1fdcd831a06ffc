//! `cargo fuzz run pipeline`: see `dataplane::fuzzing::pipeline`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::pipeline(data);
});
