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

/// The weight file of a folder and where every tensor in it is (all shards of a sharded
/// checkpoint). Safetensors files are only indexed here and read one tensor at a time by
/// [`load_into`], so loading a model holds its variables and one checkpoint tensor, not the whole
/// file and every tensor besides (three times a 2.4 GB model's size before).
pub fn read_folder(dir: &Path) -> Result<(PathBuf, Vec<(String, Stored)>), ModelError> {
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

/// A checkpoint tensor: already in memory (torch.save files are read whole), or a place in a
/// safetensors file.
pub enum Stored {
    Loaded(Tensor),
    InFile { file: PathBuf, kind: Kind, shape: Vec<i64>, offset: u64, bytes: usize },
}

impl Stored {
    pub fn shape(&self) -> Vec<i64> {
        match self {
            Stored::Loaded(t) => t.size(),
            Stored::InFile { shape, .. } => shape.clone(),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Stored::Loaded(t) => t.kind(),
            Stored::InFile { kind, .. } => *kind,
        }
    }

    /// Weights a model can take (integer tensors are buffers such as position ids).
    pub fn is_floating(&self) -> bool {
        matches!(self.kind(), Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double)
    }

    /// The tensor itself, read from its file if it is not in memory.
    pub fn read(self) -> Result<Tensor, ModelError> {
        match self {
            Stored::Loaded(t) => Ok(t),
            Stored::InFile { file, kind, shape, offset, bytes } => {
                let bad = |message: String| ModelError::BadWeights { path: file.clone(), message };
                let handle = std::fs::File::open(&file).map_err(|e| ModelError::MissingFile { path: file.clone(), source: e })?;
                let mut data = vec![0u8; bytes];
                read_exact_at(&handle, &mut data, offset).map_err(|e| bad(format!("reading {bytes} bytes at {offset}: {e}")))?;
                Tensor::f_from_data_size(&data, &shape, kind).map_err(|e| bad(e.to_string()))
            }
        }
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    file.seek(std::io::SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// The tensors of a safetensors file, from its header alone: `u64` header length, a JSON object of
/// `name → {dtype, shape, data_offsets}` (offsets into the data after the header).
fn index_safetensors(path: &Path) -> Result<Vec<(String, Stored)>, ModelError> {
    use std::io::Read;
    let bad = |message: String| ModelError::BadWeights { path: path.to_owned(), message };
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::MissingFile { path: path.to_owned(), source: e })?;
    let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| bad("shorter than a safetensors header".into()))?;
    let header_len = u64::from_le_bytes(len);
    // The format caps headers at 100 MB; past that (or past the file) it is not a safetensors file.
    if header_len > 100_000_000 || header_len + 8 > file_len {
        return Err(bad(format!("header length {header_len} does not fit a {file_len}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let entries: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let data_start = 8 + header_len;
    let mut out = Vec::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let dtype = entry["dtype"].as_str().ok_or_else(|| bad(format!("tensor '{name}' has no dtype")))?;
        let (kind, size) = match dtype {
            "F32" => (Kind::Float, 4),
            "F16" => (Kind::Half, 2),
            "BF16" => (Kind::BFloat16, 2),
            "F64" => (Kind::Double, 8),
            "I64" => (Kind::Int64, 8),
            "I32" => (Kind::Int, 4),
            "I16" => (Kind::Int16, 2),
            "I8" => (Kind::Int8, 1),
            "U8" => (Kind::Uint8, 1),
            "BOOL" => (Kind::Bool, 1),
            other => return Err(bad(format!("tensor '{name}' has dtype {other}, which no model here uses"))),
        };
        let shape: Vec<i64> = entry["shape"]
            .as_array()
            .and_then(|dims| dims.iter().map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok())).collect())
            .ok_or_else(|| bad(format!("tensor '{name}' has no valid shape")))?;
        let offsets: Vec<u64> = entry["data_offsets"]
            .as_array()
            .and_then(|o| o.iter().map(serde_json::Value::as_u64).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| bad(format!("tensor '{name}' has no valid data_offsets")))?;
        let (start, end) = (offsets[0], offsets[1]);
        let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let expected = numel.and_then(|n| n.checked_mul(size));
        if end < start || expected != Some(end - start) || data_start.checked_add(end).is_none_or(|e| e > file_len) {
            return Err(bad(format!("tensor '{name}': offsets {start}..{end} do not fit its shape {shape:?} and the file")));
        }
        out.push((name, Stored::InFile { file: path.to_owned(), kind, shape, offset: data_start + start, bytes: (end - start) as usize }));
    }
    Ok(out)
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

fn read_file(path: &Path) -> Result<Vec<(String, Stored)>, ModelError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.ends_with(".safetensors") {
        if !path.exists() {
            return Err(ModelError::MissingFile {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "a shard named by the index is missing"),
            });
        }
        return index_safetensors(path);
    }
    let file = std::fs::File::open(path).map_err(|e| ModelError::MissingFile { path: path.to_owned(), source: e })?;
    let tensors = pickle::read_checkpoint(std::io::BufReader::new(file))
        .map_err(|e| ModelError::BadWeights { path: path.to_owned(), message: format!("{e} (is it a torch.save state dict?)") })?;
    Ok(tensors.into_iter().map(|(name, t)| (name, Stored::Loaded(t))).collect())
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
    let mut by_name: HashMap<String, Stored> = tensors
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
        if src.shape() != var.size() {
            return Err(ModelError::BadWeights {
                path: path.clone(),
                message: format!("tensor '{name}' has shape {:?}, the config wants {:?}", src.shape(), var.size()),
            });
        }
        if !src.is_floating() {
            return Err(ModelError::BadWeights {
                path: path.clone(),
                message: format!("tensor '{name}' holds {:?} values, not floating point", src.kind()),
            });
        }
        var.f_copy_(&src.read()?.to_kind(Kind::Float))?;
    }
    let mut passthrough = Vec::new();
    for (name, stored) in by_name {
        if stored.is_floating() && rules.passthrough.iter().any(|p| name.starts_with(p)) {
            passthrough.push((name, stored.read()?.to_kind(Kind::Float)));
        }
    }
    passthrough.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(passthrough)
}
