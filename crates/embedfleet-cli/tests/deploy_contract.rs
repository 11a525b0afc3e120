//! The deploy files name only what the binaries understand: every variable the compose file sets is
//! a flag's environment variable of some worker, as its `--help` shows.

mod fleet;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn help_env_vars(binary: &Path) -> BTreeSet<String> {
    let out = Command::new(binary).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn compose_variables_are_flags_of_the_workers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let listed = std::fs::read_to_string(root.join("deploy/compose_env_vars.txt")).unwrap();
    let compose = std::fs::read_to_string(root.join("deploy/docker-compose.yml")).unwrap();
    let mut known = BTreeSet::new();
    for bin in ["embedfleet-coordinator", "embedfleet-generator", "embedfleet-trainer", "embedfleet-evaluator"] {
        let vars = help_env_vars(&fleet::bin(bin));
        assert!(vars.contains("EMBEDFLEET_NATS_URL") && vars.contains("EMBEDFLEET_METRICS_ADDR"), "{bin}: {vars:?}");
        known.extend(vars);
    }
    let mut count = 0;
    for var in listed.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(compose.contains(var), "{var} is listed but not in the compose file");
        assert!(known.contains(var), "the compose file sets {var}, which no worker reads");
        count += 1;
    }
    assert!(count >= 10, "only {count} variables listed");
    // And the other way: every EMBEDFLEET_ variable in the compose file is listed.
    for word in compose.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("EMBEDFLEET_") {
            assert!(listed.contains(word), "{word} is in the compose file but not in compose_env_vars.txt");
        }
    }
}
