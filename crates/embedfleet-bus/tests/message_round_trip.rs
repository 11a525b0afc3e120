//! Regressions found by fuzz/bus_decode: a message a worker accepts is the same message when it
//! is published again, numbers included.

use embedfleet_bus::messages::{Message, decode, encode};

#[test]
fn floats_survive_being_published_again() {
    // serde_json's default float parser is off by one ulp on some inputs; 2e-30 came back as
    // 1.9999999999999998e-30 after decode → encode → decode.
    let raw = br#"{"schema": 3, "type": "run_submitted", "run_id": "r1", "spec": {"input_key": "runs/r1/input/corpus.json", "model_id": "m", "chunks_per_task": 8, "dataset": {"chunk_size": 1000, "split_by": "document"}, "train": {"epochs": 0, "batch_size": 110, "learning_rate": 2e-30}}}"#;
    let message = decode(raw).unwrap();
    let Message::RunSubmitted { spec, .. } = &message else { panic!("{message:?}") };
    assert_eq!(spec.train.learning_rate, Some(2e-30));
    assert_eq!(decode(&encode(&message)).unwrap(), message);

    for value in [2e-30, 0.1 + 0.2, 1.0 / 3.0, 5e-324, f64::MAX, 0.8123456789012345, 2.2250738585072014e-308] {
        let m = Message::EvaluateDone { run_id: "r".parse().unwrap(), label: "step-1".parse().unwrap(), value };
        assert_eq!(decode(&encode(&m)).unwrap(), m, "{value:e}");
    }
}
