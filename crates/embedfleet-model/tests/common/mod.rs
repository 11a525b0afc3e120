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
