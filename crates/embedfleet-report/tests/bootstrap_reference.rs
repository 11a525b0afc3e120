//! The paired bootstrap against numpy (fixture: tools/reference/make_bootstrap_fixture.py).

use embedfleet_report::stats::{Difference, RESAMPLES, bootstrap, interval_from_means, paired, resample_means};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paired_bootstrap.json");
    let fixture: Value = serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("json");
    fixture["cases"].as_array().expect("cases").clone()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn diffs(case: &Value) -> Vec<f64> {
    floats(&case["candidate"]).iter().zip(floats(&case["base"])).map(|(c, b)| c - b).collect()
}

#[test]
fn the_same_draws_give_numpys_interval_exactly() {
    for case in cases() {
        let diffs = diffs(&case);
        let draws: Vec<Vec<usize>> = case["resamples"]["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect())
            .collect();
        let interval = interval_from_means(&diffs, resample_means(&diffs, draws.iter().map(Vec::as_slice)));
        let name = case["name"].as_str().unwrap();
        assert!((interval.mean - case["mean"].as_f64().unwrap()).abs() < 1e-12, "{name}: mean");
        assert!((interval.low - case["resamples"]["low"].as_f64().unwrap()).abs() < 1e-12, "{name}: low {}", interval.low);
        assert!((interval.high - case["resamples"]["high"].as_f64().unwrap()).abs() < 1e-12, "{name}: high {}", interval.high);
        assert_eq!(interval.resamples, draws.len());
    }
}

#[test]
fn our_own_draws_agree_with_numpys_within_monte_carlo_error() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let (low, high) = (case["seeded"]["low"].as_f64().unwrap(), case["seeded"]["high"].as_f64().unwrap());
        let ours = paired(&floats(&case["base"]), &floats(&case["candidate"])).expect("paired");
        assert_eq!(ours.resamples, RESAMPLES);
        let tolerance = (high - low) / 10.0;
        assert!((ours.low - low).abs() < tolerance && (ours.high - high).abs() < tolerance, "{name}: ours {ours:?}, numpy [{low}, {high}]");
        // The verdict numpy's interval supports is the one ours gives.
        let numpy_says = if low > 0.0 {
            Difference::Better
        } else if high < 0.0 {
            Difference::Worse
        } else {
            Difference::NoMeasurableDifference
        };
        assert_eq!(Difference::of(&ours), numpy_says, "{name}");
        assert_eq!(bootstrap(&diffs(&case), RESAMPLES, 1).map(|i| i.mean), Some(ours.mean));
    }
}
