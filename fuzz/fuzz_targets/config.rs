//! The config file (`config::Config::from_toml`): arbitrary text is either
//! refused with an error naming the key, or a valid config whose printed
//! form (`--print-config`) loads again to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::config::{Config, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::from_toml(text, &Overrides::default()) {
        let printed = config.raw.to_toml();
        let again = Config::from_toml(&printed, &Overrides::default()).expect("the printed config loads");
        assert_eq!(again.raw.to_toml(), printed, "printing is stable");
    }
});
