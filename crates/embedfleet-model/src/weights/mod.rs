//! Checkpoint files of a model folder: `model.safetensors`, sharded safetensors with their index,
//! `pytorch_model.bin` (read by [`pickle`] without Python) and sharded `.bin` files; and copying
//! them into a family's variables.

pub mod pickle;
mod zip;

use crate::error::ModelError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor, nn};

/// Weight files in the order they are preferred, as transformers prefers them.
pub const WEIGHT_FILES: &[&str] =
    &["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"];

/// The weight file of a folder and every tensor in it (all shards of a sharded checkpoint).
pub fn read_folder(dir: &Path) -> Result<(PathBuf, Vec<(String, Tensor)>), ModelError> {
    let path = WEIGHT_FILES.iter().map(|f| dir.join(f)).find(|p| p.exists()).ok_or_else(|| ModelError::MissingFile {
        path: dir.join(WEIGHT_FILES[0]),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no model.safetensors, pytorch_model.bin or sharded index (model.safetensors.index.json) in the folder",
        ),
    })?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let tensors = if name.ends_with(".index.json") {
        let mut all = Vec::new();
        for shard in shard_files(&path)? {
            all.extend(read_file(&dir.join(&shard))?);
        }
        all
    } else {
        read_file(&path)?
    };
    Ok((path, tensors))
}

/// The shard files an index names, each once, in the order they first appear.
pub fn shard_files(index: &Path) -> Result<Vec<String>, ModelError> {
    let bad = |message: String| ModelError::BadWeights { path: index.to_owned(), message };
    let raw = std::fs::read(index).map_err(|e| ModelError::MissingFile { path: index.to_owned(), source: e })?;
    let value: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = value["weight_map"].as_object().ok_or_else(|| bad("no weight_map object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("weight_map entry {tensor} is not a file name")))?;
        // Shards sit beside the index; a name that climbs out of the folder is refused.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!("shard name {file} is not a plain file name")));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_owned());
        }
    }
    if files.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    Ok(files)
}

fn read_file(path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.ends_with(".safetensors") {
        if !path.exists() {
            return Err(ModelError::MissingFile {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "a shard named by the index is missing"),
            });
        }
        return Tensor::read_safetensors(path)
            .map_err(|e| ModelError::BadWeights { path: path.to_owned(), message: e.to_string() });
    }
    let file = std::fs::File::open(path).map_err(|e| ModelError::MissingFile { path: path.to_owned(), source: e })?;
    pickle::read_checkpoint(std::io::BufReader::new(file)).map_err(|e| ModelError::BadWeights {
        path: path.to_owned(),
        message: format!("{e} (is it a torch.save state dict?)"),
    })
}

/// What loading needs to know of a family's checkpoint names.
pub struct KeyRules<'a> {
    /// Prefixes of checkpoints saved with a task head (`bert.` of BertForMaskedLM), stripped.
    pub strip_prefixes: &'a [&'a str],
    /// Tensors the encoder does not use but saving writes back (the pooler), kept aside.
    pub passthrough: &'a [&'a str],
}

/// Copies checkpoint tensors into the variables and returns the passthrough tensors; other tensors
/// (MLM and NSP heads, position-id buffers) are dropped.
pub fn load_into(vs: &mut nn::VarStore, dir: &Path, rules: &KeyRules) -> Result<Vec<(String, Tensor)>, ModelError> {
    let (path, tensors) = read_folder(dir)?;
    let mut by_name: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, t)| {
            let name = rules.strip_prefixes.iter().find_map(|p| name.strip_prefix(p)).map(str::to_owned).unwrap_or(name);
            (name, t)
        })
        .collect();
    let mut variables = vs.variables();
    let _guard = tch::no_grad_guard();
    for (name, var) in variables.iter_mut() {
        let src = by_name
            .remove(name)
            .ok_or_else(|| ModelError::BadWeights { path: path.clone(), message: format!("tensor '{name}' is missing") })?;
        if src.size() != var.size() {
            return Err(ModelError::BadWeights {
                path: path.clone(),
                message: format!("tensor '{name}' has shape {:?}, the config wants {:?}", src.size(), var.size()),
            });
        }
        if !matches!(src.kind(), Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double) {
            return Err(ModelError::BadWeights {
                path: path.clone(),
                message: format!("tensor '{name}' holds {:?} values, not floating point", src.kind()),
            });
        }
        var.f_copy_(&src.to_kind(Kind::Float))?;
    }
    let mut passthrough: Vec<(String, Tensor)> = by_name
        .into_iter()
        .filter(|(name, t)| rules.passthrough.iter().any(|p| name.starts_with(p)) && t.is_floating_point())
        .map(|(n, t)| (n, t.to_kind(Kind::Float)))
        .collect();
    passthrough.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(passthrough)
}
