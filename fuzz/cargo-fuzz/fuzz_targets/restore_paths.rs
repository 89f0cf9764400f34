#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::restore_paths(data));
