use std::path::PathBuf;

/// The real all-MiniLM-L6-v2 folder that scripts/setup.sh installs.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("EMBEDFLEET_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/all-MiniLM-L6-v2"));
    assert!(dir.join("model.safetensors").exists(), "{} is missing: run scripts/setup.sh first", dir.display());
    dir
}

#[allow(dead_code)]
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

#[allow(dead_code)]
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Copies a fixture folder (recursively) into `to`, leaving out files named in `skip`.
#[allow(dead_code)]
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name), skip);
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

#[allow(dead_code)]
pub fn rows(t: &embedfleet_model::Tensor) -> Vec<Vec<f32>> {
    let (n, d) = t.size2().unwrap();
    let flat: Vec<f32> = Vec::try_from(t.contiguous().view([-1])).unwrap();
    (0..n as usize).map(|i| flat[i * d as usize..(i + 1) * d as usize].to_vec()).collect()
}

/// (min cosine, max abs diff) of two sets of embeddings.
#[allow(dead_code)]
pub fn agreement(ours: &[Vec<f32>], reference: &[Vec<f32>]) -> (f64, f32) {
    assert_eq!(ours.len(), reference.len(), "number of embeddings");
    let mut worst = (1.0f64, 0.0f32);
    for (a, b) in ours.iter().zip(reference) {
        assert_eq!(a.len(), b.len(), "embedding width");
        worst.0 = worst.0.min(cosine(a, b));
        worst.1 = worst.1.max(a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max));
    }
    worst
}
