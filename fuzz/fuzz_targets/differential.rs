#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| eks_connector_fuzz::differential(data));
