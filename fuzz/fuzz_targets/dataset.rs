//! The dataset loader: a `<split>_dataset.json` written by embedfleet or by LlamaIndex
//! (`EmbeddingQAFinetuneDataset.save_json`), as `finetune`, `evaluate` and the fleet's trainer and
//! evaluator read it, and the three single-map files beside it.
#![no_main]

use embedfleet_core::dataset::{DatasetSplit, QaDataset};
use indexmap::IndexMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The other three files of each split: plain maps.
    let _ = serde_json::from_slice::<IndexMap<String, String>>(data);
    let _ = serde_json::from_slice::<IndexMap<String, Vec<String>>>(data);

    let Ok(dataset) = QaDataset::from_json("fuzz", data) else { return };
    let valid = dataset.validate("fuzz").is_ok();
    let pairs = dataset.pairs();
    if valid {
        assert!(!pairs.is_empty(), "a valid dataset has a training pair");
        for (chunk_id, _, passage) in &pairs {
            assert_eq!(dataset.corpus.get(*chunk_id).map(String::as_str), Some(*passage));
        }
    }
    // Written back as the eight files, it reads the same.
    for split in DatasetSplit::ALL {
        let files = dataset.files(split);
        assert_eq!(files.len(), 4);
        let (_, whole) = &files[3];
        let again = QaDataset::from_json("again", whole).expect("our own file reads back");
        assert_eq!(again, dataset);
    }
});
