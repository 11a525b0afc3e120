//! `pytorch_model.bin` as `torch.save` writes it, read without Python: the zip archive of torch ≥ 1.6
//! (`data.pkl` plus one `data/<key>` record per storage) and the older single-stream format (magic
//! number, protocol, system info, the pickle, then every storage's bytes in a row).
//!
//! The pickle is run on a small stack machine that knows the opcodes state dicts use and builds
//! values only; it never imports or calls anything. The three torch functions a state dict names
//! (`_rebuild_tensor_v2` and its relatives) are recognised by name and become tensor records.
//! Every size, offset and stride is checked against the bytes actually there before libtorch sees
//! it, so a malformed file is an error, never a crash.

use super::zip::Archive;
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::rc::Rc;
use tch::{Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("zip archive: {0}")]
    Zip(String),
    #[error("pickle: {0}")]
    Pickle(String),
    #[error("{0}")]
    Format(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn pk(message: impl Into<String>) -> PickleError {
    PickleError::Pickle(message.into())
}
fn fmt(message: impl Into<String>) -> PickleError {
    PickleError::Format(message.into())
}

/// Containers nested deeper than this are refused: state dicts nest three or four levels, and a
/// bound keeps a hostile file from exhausting the stack when its values are dropped.
const MAX_DEPTH: u32 = 64;

/// A value of the pickle machine. Containers are reference-counted, so the memo and the stack share them.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A float or a bytes object: state dicts carry them only in metadata, so the value is not kept.
    Float,
    Bytes,
    /// An integer wider than 64 bits, as its little-endian two's-complement bytes.
    BigInt(Rc<[u8]>),
    Str(Rc<str>),
    Tuple(Rc<Items>),
    List(Rc<Items>),
    Dict(Rc<Pairs>),
    /// `module.name`, as GLOBAL pushes it.
    Global(Rc<str>),
    /// A storage reference from a persistent id.
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRecord>),
    /// Whatever an unknown callable would have returned; kept so the pickle can go on.
    Opaque,
}

#[derive(Debug, Default, Clone)]
struct Items {
    items: Vec<Value>,
    depth: u32,
}

#[derive(Debug, Default, Clone)]
struct Pairs {
    pairs: Vec<(Value, Value)>,
    depth: u32,
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(c) | Value::List(c) => c.depth,
            Value::Dict(d) => d.depth,
            _ => 0,
        }
    }
    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(c) | Value::List(c) => Some(&c.items),
            _ => None,
        }
    }
}

fn container(items: Vec<Value>) -> Result<Items, PickleError> {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(pk(format!("containers nested deeper than {MAX_DEPTH}")));
    }
    Ok(Items { items, depth })
}

fn tuple(items: Vec<Value>) -> Result<Value, PickleError> {
    Ok(Value::Tuple(Rc::new(container(items)?)))
}

#[derive(Debug)]
struct StorageRef {
    key: String,
    kind: Kind,
    /// Elements the storage holds, as the pickle states it.
    numel: u64,
}

/// A tensor as the pickle describes it: a window (offset, sizes, strides, in elements) onto a storage.
#[derive(Debug)]
pub struct TensorRecord {
    storage: Rc<StorageRef>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

fn storage_kind(name: &str) -> Result<Kind, PickleError> {
    Ok(match name {
        "torch.FloatStorage" => Kind::Float,
        "torch.DoubleStorage" => Kind::Double,
        "torch.HalfStorage" => Kind::Half,
        "torch.BFloat16Storage" => Kind::BFloat16,
        "torch.LongStorage" => Kind::Int64,
        "torch.IntStorage" => Kind::Int,
        "torch.ShortStorage" => Kind::Int16,
        "torch.CharStorage" => Kind::Int8,
        "torch.ByteStorage" => Kind::Uint8,
        "torch.BoolStorage" => Kind::Bool,
        other => return Err(fmt(format!("storage type {other} is not supported (only real and integer tensors)"))),
    })
}

/// The work a pickle may ask for, per byte of it: every opcode costs one, and copies of shared
/// containers and walks over memoised tuples cost their length. A state dict needs about one step
/// per byte; a file crafted to make the machine repeat work on shared values (thousands of appends
/// to a memoised list, one tuple read by thousands of calls) runs out of budget instead, so reading
/// any file takes time linear in its size.
const WORK_PER_BYTE: u64 = 16;
/// Work every pickle may do, however small.
const WORK_FLOOR: u64 = 1 << 16;
/// Most values on the stack, and most marks.
const MAX_STACK: usize = 1 << 20;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 20;
/// Most container items copied, over the whole pickle. The memo keeps the version of a container it
/// was given, so every copy made before a change stays alive: without this cap the work budget
/// alone would let a 12 MB pickle hold 16 copied items per byte (gigabytes). A state dict copies
/// almost nothing.
const MAX_COPIED_ITEMS: u64 = 1 << 22;

/// What to do with a persistent id: the zip format names records, the legacy format numbers them.
struct Unpickler<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Steps taken, and the most this pickle may take.
    work: u64,
    budget: u64,
    /// Container items copied so far (see [`MAX_COPIED_ITEMS`]).
    copied: u64,
}

impl<'a> Unpickler<'a> {
    fn new(bytes: &'a [u8], pos: usize) -> Self {
        let budget = WORK_FLOOR.saturating_add((bytes.len() as u64).saturating_mul(WORK_PER_BYTE));
        Self { bytes, pos, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), work: 0, budget, copied: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| pk("truncated"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("eight bytes")))
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| pk("unterminated text field"))?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| pk("text field is not UTF-8"))?;
        self.pos += end + 1;
        Ok(s)
    }
    fn len_prefixed(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let n = usize::try_from(n).map_err(|_| pk("length overflows"))?;
        self.take(n)
    }
    fn text(&mut self, n: u64) -> Result<Value, PickleError> {
        let b = self.len_prefixed(n)?;
        let s = std::str::from_utf8(b).map_err(|_| pk("string is not UTF-8"))?;
        Ok(Value::Str(s.into()))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }
    fn pop(&mut self) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(pk("stack underflow"));
        }
        Ok(self.stack.pop().expect("length checked"))
    }
    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(pk("stack underflow"));
        }
        Ok(self.stack.last_mut().expect("length checked"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| pk("no mark"))?;
        Ok(self.stack.split_off(mark))
    }

    /// Counts `cost` units of work against the budget the pickle's size allows (see [`WORK_PER_BYTE`]).
    fn charge(&mut self, cost: u64) -> Result<(), PickleError> {
        self.work = self.work.saturating_add(cost);
        if self.work > self.budget {
            return Err(pk(format!(
                "the pickle asks for more work than its {} bytes can need (over {} steps): refused as crafted",
                self.bytes.len(),
                self.budget
            )));
        }
        Ok(())
    }

    /// Charges the copy of a shared container of `items` items: work, and memory that the memo
    /// may keep alive.
    fn charge_copy(&mut self, items: u64) -> Result<(), PickleError> {
        self.charge(items)?;
        self.copied = self.copied.saturating_add(items);
        if self.copied > MAX_COPIED_ITEMS {
            return Err(pk(format!(
                "the pickle copies more than {MAX_COPIED_ITEMS} container items (a list or dict changed after the memo took it, again and again): refused as crafted"
            )));
        }
        Ok(())
    }

    /// Runs to STOP and returns the result; `persistent` resolves persistent ids. Each opcode is
    /// handled by the method for its family.
    fn run(&mut self, persistent: &mut dyn FnMut(Value) -> Result<Value, PickleError>) -> Result<Value, PickleError> {
        loop {
            self.charge(1)?;
            if self.stack.len() > MAX_STACK || self.marks.len() > MAX_STACK {
                return Err(pk(format!("more than {MAX_STACK} values on the stack")));
            }
            let op = self.byte()?;
            match op {
                b'.' => return self.pop(),
                0x80 | 0x95 | b'(' | b'0' | b'1' | b'2' => self.stack_op(op)?,
                b'N' | 0x88 | 0x89 | b'J' | b'K' | b'M' | 0x8a | 0x8b | b'I' | b'G' => self.number(op)?,
                b'X' | 0x8c | 0x8d | b'C' | b'B' | 0x8e | b'U' | b'T' => self.text_or_bytes(op)?,
                b')' | b't' | 0x85..=0x87 | b']' | b'l' | b'a' | b'e' | b'}' | b'd' | b's' | b'u' => self.container_op(op)?,
                b'q' | b'r' | 0x94 | b'h' | b'j' => self.memo_op(op)?,
                b'c' | 0x93 | b'Q' | b'R' | 0x81 | b'b' => self.object_op(op, persistent)?,
                other => return Err(pk(format!("opcode 0x{other:02x} is not supported"))),
            }
        }
    }

    /// The protocol and frame headers, MARK, POP, POP_MARK and DUP.
    fn stack_op(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            0x80 => {
                let proto = self.byte()?;
                if proto > 5 {
                    return Err(pk(format!("pickle protocol {proto}")));
                }
            }
            0x95 => {
                self.u64()?; // FRAME: a length hint only
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            _ => {
                let v = self.top()?.clone();
                self.push(v);
            }
        }
        Ok(())
    }

    /// None, booleans, integers of every width, floats (kept as a marker only).
    fn number(&mut self, op: u8) -> Result<(), PickleError> {
        let v = match op {
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'J' => Value::Int(self.u32()? as i32 as i64),
            b'K' => Value::Int(self.byte()? as i64),
            b'M' => Value::Int(self.u16()? as i64),
            0x8a | 0x8b => {
                let n = if op == 0x8a { self.byte()? as u64 } else { self.u32()? as u64 };
                let b = self.len_prefixed(n)?;
                if b.len() > 8 {
                    Value::BigInt(b.into())
                } else {
                    let mut v: i64 = 0;
                    for (i, byte) in b.iter().enumerate() {
                        v |= (*byte as i64) << (8 * i);
                    }
                    if let Some(&last) = b.last()
                        && last & 0x80 != 0
                        && b.len() < 8
                    {
                        v -= 1i64 << (8 * b.len());
                    }
                    Value::Int(v)
                }
            }
            b'I' => match self.line()? {
                "01" => Value::Bool(true),
                "00" => Value::Bool(false),
                s => Value::Int(s.trim().parse().map_err(|_| pk("bad INT"))?),
            },
            _ => {
                self.take(8)?;
                Value::Float
            }
        };
        self.push(v);
        Ok(())
    }

    /// Strings (kept) and byte strings (a marker only).
    fn text_or_bytes(&mut self, op: u8) -> Result<(), PickleError> {
        let v = match op {
            b'X' => {
                let n = self.u32()? as u64;
                self.text(n)?
            }
            0x8c => {
                let n = self.byte()? as u64;
                self.text(n)?
            }
            0x8d => {
                let n = self.u64()?;
                self.text(n)?
            }
            _ => {
                let n = match op {
                    b'C' | b'U' => self.byte()? as u64,
                    b'B' | b'T' => self.u32()? as u64,
                    _ => self.u64()?,
                };
                let b = self.len_prefixed(n)?;
                if op == b'U' || op == b'T' { Value::Str(String::from_utf8_lossy(b).into()) } else { Value::Bytes }
            }
        };
        self.push(v);
        Ok(())
    }

    /// Tuples, lists and dicts: made from the stack, and filled in place. A container the memo also
    /// holds is copied before it changes (values, not references, as the depth bound needs), and
    /// the copy is paid for from the work budget, so no file can make the copies quadratic.
    fn container_op(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b')' => self.push(tuple(Vec::new())?),
            b't' => {
                let items = self.pop_mark()?;
                self.push(tuple(items)?);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(tuple(items)?);
            }
            b']' => self.push(Value::List(Rc::new(Items::default()))),
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(Rc::new(container(items)?)));
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                let copy_cost = match self.top()? {
                    Value::List(list) if Rc::strong_count(list) > 1 => list.items.len() as u64,
                    Value::List(_) => 0,
                    _ => return Err(pk("APPEND to a non-list")),
                };
                self.charge_copy(copy_cost)?;
                let Value::List(list) = self.top()? else { return Err(pk("APPEND to a non-list")) };
                let list = Rc::make_mut(list);
                // The depth grows with what is added only: no rescan of what is there.
                let added = items.iter().map(Value::depth).max().unwrap_or(0);
                list.depth = list.depth.max(1 + added);
                list.items.extend(items);
                if list.depth > MAX_DEPTH {
                    return Err(pk(format!("containers nested deeper than {MAX_DEPTH}")));
                }
            }
            b'}' => self.push(Value::Dict(Rc::new(Pairs::default()))),
            b'd' => {
                let items = self.pop_mark()?;
                let mut dict = Pairs::default();
                set_items(&mut dict, items)?;
                self.push(Value::Dict(Rc::new(dict)));
            }
            _ => {
                let items = if op == b's' {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    vec![k, v]
                } else {
                    self.pop_mark()?
                };
                let copy_cost = match self.top()? {
                    Value::Dict(dict) if Rc::strong_count(dict) > 1 => dict.pairs.len() as u64,
                    _ => 0,
                };
                self.charge_copy(copy_cost)?;
                match self.top()? {
                    Value::Dict(dict) => set_items(Rc::make_mut(dict), items)?,
                    // A dict subclass rebuilt by an unknown callable: its items do not matter.
                    Value::Opaque => {}
                    _ => return Err(pk("SETITEM on a non-dict")),
                }
            }
        }
        Ok(())
    }

    /// PUT, MEMOIZE and GET, with at most [`MAX_MEMO`] entries.
    fn memo_op(&mut self, op: u8) -> Result<(), PickleError> {
        let put = match op {
            b'q' => Some(self.byte()? as u32),
            b'r' => Some(self.u32()?),
            0x94 => Some(self.memo.len() as u32),
            _ => None,
        };
        if let Some(i) = put {
            if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&i) {
                return Err(pk(format!("more than {MAX_MEMO} memo entries")));
            }
            let v = self.top()?.clone();
            self.memo.insert(i, v);
            return Ok(());
        }
        let i = if op == b'h' { self.byte()? as u32 } else { self.u32()? };
        let v = self.memo.get(&i).cloned().ok_or_else(|| pk(format!("memo entry {i} is missing")))?;
        self.push(v);
        Ok(())
    }

    /// Globals, persistent ids, calls (recognised by name, never run) and BUILD.
    fn object_op(&mut self, op: u8, persistent: &mut dyn FnMut(Value) -> Result<Value, PickleError>) -> Result<(), PickleError> {
        match op {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(format!("{module}.{name}").into()));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module.as_str(), name.as_str()) {
                    (Some(m), Some(n)) => self.push(Value::Global(format!("{m}.{n}").into())),
                    _ => return Err(pk("STACK_GLOBAL needs two strings")),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = persistent(pid)?;
                self.push(v);
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                // Reading a tensor's sizes and strides walks its argument tuples: a memoised tuple
                // handed to many calls is paid for each time.
                let cost: u64 = args.items().map_or(0, |items| items.iter().map(|v| v.items().map_or(1, |i| i.len() as u64)).sum());
                self.charge(cost)?;
                let v = reduce(&callable, &args)?;
                self.push(v);
            }
            _ => {
                // BUILD sets an object's state (an OrderedDict's `_metadata`): not needed.
                self.pop()?;
                self.top()?;
            }
        }
        Ok(())
    }
}

fn set_items(dict: &mut Pairs, items: Vec<Value>) -> Result<(), PickleError> {
    if !items.len().is_multiple_of(2) {
        return Err(pk("odd number of dict items"));
    }
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        dict.depth = dict.depth.max(1 + k.depth().max(v.depth()));
        dict.pairs.push((k, v));
    }
    if dict.depth > MAX_DEPTH {
        return Err(pk(format!("containers nested deeper than {MAX_DEPTH}")));
    }
    Ok(())
}

fn int_list(v: &Value, what: &str) -> Result<Vec<i64>, PickleError> {
    let items = v.items().ok_or_else(|| fmt(format!("tensor {what} is not a tuple")))?;
    items.iter().map(|x| x.as_int().ok_or_else(|| fmt(format!("tensor {what} holds a non-integer")))).collect()
}

/// The callables a state dict uses; anything else becomes an opaque value.
fn reduce(callable: &Value, args: &Value) -> Result<Value, PickleError> {
    let Value::Global(name) = callable else {
        return Ok(Value::Opaque);
    };
    let args = args.items().ok_or_else(|| pk("REDUCE arguments are not a tuple"))?;
    match &**name {
        "collections.OrderedDict" | "builtins.dict" if args.is_empty() => Ok(Value::Dict(Rc::new(Pairs::default()))),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let [storage, offset, size, stride, ..] = args else {
                return Err(fmt(format!("{name} takes at least four arguments")));
            };
            let Value::Storage(storage) = storage else {
                return Err(fmt(format!("{name} without a storage")));
            };
            Ok(Value::Tensor(Rc::new(TensorRecord {
                storage: storage.clone(),
                offset: offset.as_int().ok_or_else(|| fmt("tensor offset is not an integer"))?,
                size: int_list(size, "size")?,
                stride: int_list(stride, "stride")?,
            })))
        }
        // nn.Parameter objects saved whole: the tensor is the first argument.
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => Err(fmt(format!("{name} without a tensor"))),
        },
        // Tensor subclasses: (function, type, arguments, state); the function rebuilds the tensor.
        "torch._tensor._rebuild_from_type_v2" => match args {
            [func, _, inner, ..] => reduce(func, inner),
            _ => Err(fmt(format!("{name} takes four arguments"))),
        },
        _ => Ok(Value::Opaque),
    }
}

/// `('storage', torch.FloatStorage, key, location, numel[, view_metadata])`.
fn storage_pid(pid: &Value) -> Result<StorageRef, PickleError> {
    let items = pid.items().ok_or_else(|| fmt("persistent id is not a tuple"))?;
    let [tag, kind, key, _location, numel, rest @ ..] = items else {
        return Err(fmt("persistent id has fewer than five fields"));
    };
    if tag.as_str() != Some("storage") {
        return Err(fmt("persistent id is not a storage"));
    }
    if rest.first().is_some_and(|v| !matches!(v, Value::None)) {
        return Err(fmt("storage views (torch < 1.0 checkpoints) are not supported"));
    }
    let Value::Global(kind) = kind else { return Err(fmt("storage type is not a class")) };
    let key = match key {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        _ => return Err(fmt("storage key is neither text nor a number")),
    };
    let numel = numel.as_int().filter(|n| *n >= 0).ok_or_else(|| fmt("storage size is not a count"))? as u64;
    Ok(StorageRef { key, kind: storage_kind(kind)?, numel })
}

/// Named tensor records from the unpickled top-level value (a dict of name → tensor; other entries,
/// such as a saved step counter, are skipped).
fn records(top: Value) -> Result<Vec<(String, Rc<TensorRecord>)>, PickleError> {
    let Value::Dict(dict) = top else {
        return Err(fmt("the checkpoint is not a dict of tensors (a whole pickled model cannot be read; save its state_dict)"));
    };
    let mut out = Vec::new();
    for (k, v) in &dict.pairs {
        if let (Value::Str(name), Value::Tensor(t)) = (k, v) {
            out.push((name.to_string(), t.clone()));
        }
    }
    if out.is_empty() && !dict.pairs.is_empty() {
        // {"state_dict": {...}} or {"model": {...}}, as training scripts often save.
        for (k, v) in &dict.pairs {
            if matches!(k.as_str(), Some("state_dict" | "model" | "module")) && matches!(v, Value::Dict(_)) {
                return records(v.clone());
            }
        }
    }
    Ok(out)
}

/// Builds an owned, contiguous tensor from a record and its storage's bytes, after checking that the
/// window fits inside them.
fn materialize(name: &str, record: &TensorRecord, storage: &Tensor) -> Result<Tensor, PickleError> {
    let bad = |why: String| fmt(format!("tensor {name}: {why}"));
    if record.size.len() != record.stride.len() {
        return Err(bad(format!("{} sizes but {} strides", record.size.len(), record.stride.len())));
    }
    if record.offset < 0 || record.size.iter().any(|&s| s < 0) || record.stride.iter().any(|&s| s < 0) {
        return Err(bad("negative size, stride or offset".into()));
    }
    let numel = storage.numel() as i64;
    let mut elements: i64 = 1;
    let mut last = record.offset;
    for (&size, &stride) in record.size.iter().zip(&record.stride) {
        elements = elements.checked_mul(size).ok_or_else(|| bad("size overflows".into()))?;
        if size > 0 {
            last = (size - 1).checked_mul(stride).and_then(|x| x.checked_add(last)).ok_or_else(|| bad("stride overflows".into()))?;
        }
    }
    if elements == 0 {
        return Ok(Tensor::f_zeros(&record.size, (record.storage.kind, tch::Device::Cpu))?);
    }
    if last >= numel {
        return Err(bad(format!("reaches element {last} of a storage of {numel}")));
    }
    Ok(storage.f_as_strided(&record.size, &record.stride, Some(record.offset))?.f_contiguous()?)
}

fn storage_tensor(key: &str, kind: Kind, numel: u64, bytes: &[u8]) -> Result<Tensor, PickleError> {
    let want = numel.checked_mul(kind.elt_size_in_bytes() as u64).ok_or_else(|| fmt("storage size overflows"))?;
    if bytes.len() as u64 != want {
        return Err(fmt(format!("storage {key} has {} bytes, its {numel} elements need {want}", bytes.len())));
    }
    let numel = i64::try_from(numel).map_err(|_| fmt("storage size overflows"))?;
    Ok(Tensor::f_from_data_size(bytes, &[numel], kind)?)
}

/// Reads every tensor of a `torch.save` file (either format).
pub fn read_checkpoint<R: Read + Seek>(mut reader: R) -> Result<Vec<(String, Tensor)>, PickleError> {
    let mut magic = [0u8; 4];
    let n = reader.read(&mut magic)?;
    reader.seek(std::io::SeekFrom::Start(0))?;
    if n == 4 && magic == *b"PK\x03\x04" {
        read_zip(reader)
    } else {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes)?;
        read_legacy(&bytes)
    }
}

fn read_zip<R: Read + Seek>(reader: R) -> Result<Vec<(String, Tensor)>, PickleError> {
    let mut archive = Archive::open(reader)?;
    let pkl = archive
        .members
        .iter()
        .find(|m| m.name == "data.pkl" || m.name.ends_with("/data.pkl"))
        .cloned()
        .ok_or_else(|| fmt("the archive has no data.pkl: not a torch.save file"))?;
    let prefix = pkl.name.strip_suffix("data.pkl").unwrap_or_default().to_owned();
    if let Some(order) = archive.find(&format!("{prefix}byteorder")).cloned() {
        let order = archive.read(&order)?;
        if order != b"little" {
            return Err(fmt(format!("byte order {:?} (only little-endian checkpoints)", String::from_utf8_lossy(&order))));
        }
    }
    let program = archive.read(&pkl)?;
    let mut storages: HashMap<String, Rc<StorageRef>> = HashMap::new();
    let top = Unpickler::new(&program, 0).run(&mut |pid| {
        let s = storage_pid(&pid)?;
        let s = storages.entry(s.key.clone()).or_insert_with(|| Rc::new(s)).clone();
        Ok(Value::Storage(s))
    })?;
    let mut loaded: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::new();
    for (name, record) in records(top)? {
        let key = &record.storage.key;
        if !loaded.contains_key(key) {
            let member = archive
                .find(&format!("{prefix}data/{key}"))
                .cloned()
                .ok_or_else(|| fmt(format!("tensor {name}: record data/{key} is missing")))?;
            let bytes = archive.read(&member)?;
            loaded.insert(key.clone(), storage_tensor(key, record.storage.kind, record.storage.numel, &bytes)?);
        }
        out.push((name.clone(), materialize(&name, &record, &loaded[key])?));
    }
    Ok(out)
}

/// The format of torch < 1.6 (and `_use_new_zipfile_serialization=False`): five pickles and the
/// storages' bytes back to back.
fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, PickleError> {
    /// 0x1950a86a20f9469cfc6c, little-endian.
    const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    let mut pos = 0;
    let next = |pos: &mut usize, persistent: &mut dyn FnMut(Value) -> Result<Value, PickleError>| {
        let mut u = Unpickler::new(bytes, *pos);
        let v = u.run(persistent);
        *pos = u.pos;
        v
    };
    let no_pid = &mut |_: Value| -> Result<Value, PickleError> { Err(pk("unexpected persistent id")) };
    let magic = next(&mut pos, no_pid).map_err(|_| fmt("neither a zip archive nor a legacy torch.save file"))?;
    if !matches!(&magic, Value::BigInt(b) if **b == MAGIC) {
        return Err(fmt("neither a zip archive nor a legacy torch.save file"));
    }
    let protocol = next(&mut pos, no_pid)?;
    if protocol.as_int() != Some(1001) {
        return Err(fmt("legacy checkpoint of an unknown protocol version"));
    }
    next(&mut pos, no_pid)?; // system info: byte order and type sizes of the saving machine
    let mut storages: HashMap<String, Rc<StorageRef>> = HashMap::new();
    let top = next(&mut pos, &mut |pid| {
        let s = storage_pid(&pid)?;
        let s = storages.entry(s.key.clone()).or_insert_with(|| Rc::new(s)).clone();
        Ok(Value::Storage(s))
    })?;
    let keys = next(&mut pos, no_pid)?;
    let keys = keys.items().ok_or_else(|| fmt("legacy storage key list is not a list"))?;
    let mut loaded: HashMap<String, Tensor> = HashMap::new();
    for key in keys {
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => return Err(fmt("legacy storage key is neither text nor a number")),
        };
        let storage = storages.get(&key).ok_or_else(|| fmt(format!("storage {key} is listed but never used")))?;
        let size_bytes = bytes.get(pos..pos + 8).ok_or_else(|| fmt("storage data cut short"))?;
        let numel = u64::from_le_bytes(size_bytes.try_into().expect("eight bytes"));
        if numel != storage.numel {
            return Err(fmt(format!("storage {key} holds {numel} elements, the pickle says {}", storage.numel)));
        }
        let len = numel
            .checked_mul(storage.kind.elt_size_in_bytes() as u64)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| fmt("storage size overflows"))?;
        let data = bytes.get(pos + 8..).and_then(|rest| rest.get(..len)).ok_or_else(|| fmt("storage data cut short"))?;
        loaded.insert(key.clone(), storage_tensor(&key, storage.kind, numel, data)?);
        pos += 8 + len;
    }
    let mut out = Vec::new();
    for (name, record) in records(top)? {
        let storage =
            loaded.get(&record.storage.key).ok_or_else(|| fmt(format!("tensor {name}: storage {} has no data", record.storage.key)))?;
        out.push((name.clone(), materialize(&name, &record, storage)?));
    }
    Ok(out)
}
