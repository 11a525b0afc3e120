//! Just enough of the zip format to find the records of a `torch.save` archive: the central
//! directory (zip64 included, since checkpoints pass 4 GiB) and where each stored member's bytes
//! start. torch writes members uncompressed, so nothing here inflates.

use super::pickle::PickleError;
use std::io::{Read, Seek, SeekFrom};

const EOCD: u32 = 0x0605_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;
/// The end-of-central-directory record is 22 bytes plus a comment of at most 65,535.
const EOCD_SEARCH: u64 = 22 + 65_535;

#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    /// Compression method (0: stored).
    pub method: u16,
    pub size: u64,
    local_header: u64,
}

pub struct Archive<R> {
    reader: R,
    len: u64,
    pub members: Vec<Member>,
    /// Member index by name: a lookup per tensor stays constant-time however many members there are.
    by_name: std::collections::HashMap<String, usize>,
}

fn bad(message: impl Into<String>) -> PickleError {
    PickleError::Zip(message.into())
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, PickleError> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| bad("record cut short"))
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, PickleError> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or_else(|| bad("record cut short"))
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, PickleError> {
    b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().expect("eight bytes"))).ok_or_else(|| bad("record cut short"))
}

impl<R: Read + Seek> Archive<R> {
    pub fn open(mut reader: R) -> Result<Self, PickleError> {
        let len = reader.seek(SeekFrom::End(0))?;
        let tail_len = len.min(EOCD_SEARCH);
        let tail = read_at(&mut reader, len, len - tail_len, tail_len)?;
        let eocd = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| u32_at(&tail, i).ok() == Some(EOCD))
            .ok_or_else(|| bad("no end-of-central-directory record: not a zip archive"))?;
        let mut entries = u16_at(&tail, eocd + 10)? as u64;
        let mut cd_size = u32_at(&tail, eocd + 12)? as u64;
        let mut cd_offset = u32_at(&tail, eocd + 16)? as u64;
        if entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            // zip64: a locator sits right before the classic record and points at the zip64 one.
            let locator = eocd.checked_sub(20).ok_or_else(|| bad("zip64 locator missing"))?;
            if u32_at(&tail, locator)? != ZIP64_LOCATOR {
                return Err(bad("zip64 locator missing"));
            }
            let record_at = u64_at(&tail, locator + 8)?;
            let record = read_at(&mut reader, len, record_at, 56)?;
            if u32_at(&record, 0)? != ZIP64_EOCD {
                return Err(bad("zip64 end-of-central-directory record missing"));
            }
            entries = u64_at(&record, 32)?;
            cd_size = u64_at(&record, 40)?;
            cd_offset = u64_at(&record, 48)?;
        }
        let cd = read_at(&mut reader, len, cd_offset, cd_size)?;
        // Every central entry takes at least 46 bytes, which bounds the count by the bytes read.
        if entries > cd.len() as u64 / 46 {
            return Err(bad(format!("central directory claims {entries} members in {} bytes", cd.len())));
        }
        let mut members = Vec::with_capacity(entries as usize);
        let mut at = 0usize;
        for _ in 0..entries {
            if u32_at(&cd, at)? != CENTRAL {
                return Err(bad("central directory entry has a bad signature"));
            }
            let method = u16_at(&cd, at + 10)?;
            let mut compressed = u32_at(&cd, at + 20)? as u64;
            let mut size = u32_at(&cd, at + 24)? as u64;
            let name_len = u16_at(&cd, at + 28)? as usize;
            let extra_len = u16_at(&cd, at + 30)? as usize;
            let comment_len = u16_at(&cd, at + 32)? as usize;
            let mut local_header = u32_at(&cd, at + 42)? as u64;
            let name_at = at + 46;
            let name = cd.get(name_at..name_at + name_len).ok_or_else(|| bad("member name cut short"))?;
            let name = String::from_utf8_lossy(name).into_owned();
            let extra = cd.get(name_at + name_len..name_at + name_len + extra_len).ok_or_else(|| bad("member extra field cut short"))?;
            // zip64 sizes and offsets live in extra field 0x0001, in this order, each present only
            // when the 32-bit field above is saturated.
            let mut e = 0usize;
            while e + 4 <= extra.len() {
                let id = u16_at(extra, e)?;
                let field_len = u16_at(extra, e + 2)? as usize;
                let body = extra.get(e + 4..e + 4 + field_len).ok_or_else(|| bad("zip64 field cut short"))?;
                if id == 1 {
                    let mut f = 0usize;
                    for value in [&mut size, &mut compressed, &mut local_header] {
                        if *value == 0xFFFF_FFFF {
                            *value = u64_at(body, f)?;
                            f += 8;
                        }
                    }
                }
                e += 4 + field_len;
            }
            if method == 0 && compressed != size {
                return Err(bad(format!("stored member {name} has two sizes ({compressed} and {size})")));
            }
            members.push(Member { name, method, size, local_header });
            at = name_at + name_len + extra_len + comment_len;
        }
        refuse_overlaps(&members, len)?;
        let mut by_name = std::collections::HashMap::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            if by_name.insert(m.name.clone(), i).is_some() {
                return Err(bad(format!("two members are named {}", m.name)));
            }
        }
        Ok(Self { reader, len, members, by_name })
    }

    pub fn find(&self, name: &str) -> Option<&Member> {
        self.by_name.get(name).map(|&i| &self.members[i])
    }

    /// The bytes of a stored member.
    pub fn read(&mut self, member: &Member) -> Result<Vec<u8>, PickleError> {
        if member.method != 0 {
            return Err(bad(format!(
                "member {} is compressed (method {}); torch.save writes stored members only",
                member.name, member.method
            )));
        }
        let header = read_at(&mut self.reader, self.len, member.local_header, 30)?;
        if u32_at(&header, 0)? != LOCAL {
            return Err(bad(format!("member {} has no local header", member.name)));
        }
        // The local extra field differs from the central one: torch pads it to align the data.
        let skip = 30 + u16_at(&header, 26)? as u64 + u16_at(&header, 28)? as u64;
        let start = member.local_header.checked_add(skip).ok_or_else(|| bad("member offset overflows"))?;
        read_at(&mut self.reader, self.len, start, member.size)
    }
}

/// Members whose bytes overlap are refused: torch.save never writes them, and a crafted archive
/// whose thousand members all point at one large record would make each read allocate it again.
/// Each member spans at least its 30-byte local header and its data, from its local header on.
fn refuse_overlaps(members: &[Member], len: u64) -> Result<(), PickleError> {
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(members.len());
    for m in members {
        let end = m.local_header.checked_add(30).and_then(|e| e.checked_add(m.size)).ok_or_else(|| bad("member size overflows"))?;
        if end > len {
            return Err(bad(format!("member {} ({} bytes) runs past the end of the {len}-byte file", m.name, m.size)));
        }
        spans.push((m.local_header, end, &m.name));
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(bad(format!("members {} and {} overlap: refused (torch.save writes each record once)", pair[0].2, pair[1].2)));
        }
    }
    Ok(())
}

/// Reads `count` bytes at `offset`, refusing ranges outside a file of `len` bytes (so a corrupt size
/// cannot make us allocate more than the file holds).
fn read_at<R: Read + Seek>(reader: &mut R, len: u64, offset: u64, count: u64) -> Result<Vec<u8>, PickleError> {
    let end = offset.checked_add(count).ok_or_else(|| bad("offset overflows"))?;
    if end > len {
        return Err(bad(format!("range {offset}..{end} is past the end of the {len}-byte file")));
    }
    reader.seek(SeekFrom::Start(offset))?;
    let mut out = vec![0u8; count as usize];
    reader.read_exact(&mut out)?;
    Ok(out)
}
