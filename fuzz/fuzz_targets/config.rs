//! The config loader (`Config::from_str`) on arbitrary text, with the local backends (env, age,
//! sops) registered so their settings and references are validated too.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use broker_core::{Config, Registry};
use libfuzzer_sys::fuzz_target;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r = Registry::new();
        broker_env::register(&mut r).expect("env registers");
        broker_age::register(&mut r).expect("age registers");
        broker_sops::register(&mut r).expect("sops registers");
        r
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_str(text, Path::new("/fuzz/.broker.yml"), registry()) else {
        return;
    };
    for (name, settings) in &config.backends {
        let _ = settings.parse::<serde_json::Value>();
        match name.as_str() {
            "age" => drop(settings.parse::<broker_age::Settings>()),
            "sops" => drop(settings.parse::<broker_sops::Settings>()),
            _ => {}
        }
    }
    for spec in &config.credentials {
        let _ = config.require_credential(&spec.name);
    }
});
