//! wick's GGUF header reader. candle's `gguf_file::Content::read` refuses a whole file as soon
//! as one tensor has a type it does not know, and candle 0.11 knows no `MXFP4` (ggml type 39,
//! the experts of every gpt-oss file). This reader parses the header itself: metadata into
//! candle's [`Value`]s, tensors of the types candle reads into an ordinary candle [`Content`]
//! (so the rest of wick reads them as before), and tensors of other types into
//! [`GgufFile::other`] with their offsets, read as raw bytes on demand ([`GgufFile::read_raw`]).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;

use crate::{EngineError, Result};

/// ggml's type id of MXFP4 (`GGML_TYPE_MXFP4`).
pub const GGML_TYPE_MXFP4: u32 = 39;
/// Bytes of one MXFP4 block of 32 values: an E8M0 exponent and 16 bytes of nibbles.
pub const MXFP4_BLOCK_BYTES: usize = 17;

const MAX_DIMS: u32 = 8;
const MAX_STRING: u64 = 1 << 26;
const MAX_ELEMENTS: u64 = 1 << 26;
const MAX_DEPTH: usize = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// A tensor of a type candle does not read.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherTensor {
    /// ggml type id.
    pub dtype: u32,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Offset from the start of the tensor data.
    pub offset: u64,
}

impl OtherTensor {
    /// Bytes the tensor occupies, for the types wick reads raw.
    pub fn byte_len(&self) -> Option<usize> {
        let n: usize = self.shape.iter().product();
        match self.dtype {
            GGML_TYPE_MXFP4 if n.is_multiple_of(32) => Some(n / 32 * MXFP4_BLOCK_BYTES),
            _ => None,
        }
    }

    /// The type's name as ggml spells it (for messages).
    pub fn type_name(&self) -> String {
        match self.dtype {
            GGML_TYPE_MXFP4 => "MXFP4".into(),
            16 => "IQ2_XXS".into(),
            17 => "IQ2_XS".into(),
            18 => "IQ3_XXS".into(),
            19 => "IQ1_S".into(),
            20 => "IQ4_NL".into(),
            21 => "IQ3_S".into(),
            22 => "IQ2_S".into(),
            23 => "IQ4_XS".into(),
            29 => "IQ1_M".into(),
            34 => "TQ1_0".into(),
            35 => "TQ2_0".into(),
            t => format!("ggml type {t}"),
        }
    }
}

/// A parsed GGUF header.
pub struct GgufFile {
    /// Metadata and the tensors candle reads.
    pub content: Content,
    /// Tensors of other types (MXFP4, ...), by name.
    pub other: HashMap<String, OtherTensor>,
}

fn bad(msg: impl Into<String>) -> EngineError {
    EngineError::Unsupported(format!("not a readable GGUF file: {}", msg.into()))
}

/// A bounded little-endian reader over the header.
struct Header<'a, R> {
    r: &'a mut R,
    v1: bool,
    file_size: u64,
}

impl<R: Read + Seek> Header<'_, R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| bad(format!("truncated header ({e})")))?;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.bytes()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    /// A length or count: u32 in GGUF v1, u64 after.
    fn len(&mut self) -> Result<u64> {
        if self.v1 {
            Ok(self.u32()? as u64)
        } else {
            self.u64()
        }
    }
    fn remaining(&mut self) -> Result<u64> {
        Ok(self.file_size.saturating_sub(self.r.stream_position()?))
    }
    fn string(&mut self) -> Result<String> {
        let len = self.len()?;
        if len > MAX_STRING || len > self.remaining()? {
            return Err(bad(format!("string of {len} bytes")));
        }
        let mut v = vec![0u8; len as usize];
        self.r.read_exact(&mut v).map_err(|e| bad(format!("truncated string ({e})")))?;
        while v.last() == Some(&0) {
            v.pop();
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(bad(format!("bool value {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(bad("arrays nested too deeply"));
                }
                let ety = self.u32()?;
                let n = self.len()?;
                if n > MAX_ELEMENTS || n > self.remaining()? {
                    return Err(bad(format!("array of {n} elements")));
                }
                let mut vs = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    vs.push(self.value(ety, depth + 1)?);
                }
                Value::Array(vs)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => return Err(bad(format!("metadata value type {t}"))),
        })
    }
}

/// candle's type for a ggml type id, where it has one.
fn candle_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

impl GgufFile {
    /// Parses the header of a GGUF stream.
    pub fn read<R: Read + Seek>(r: &mut R) -> Result<Self> {
        let file_size = r.seek(SeekFrom::End(0))?;
        r.seek(SeekFrom::Start(0))?;
        let mut h = Header { r, v1: false, file_size };
        let magic = h.u32()?;
        if magic != 0x4655_4747 && magic != 0x4747_5546 {
            return Err(bad(format!("magic {magic:#010x}")));
        }
        let version = h.u32()?;
        let magic = match version {
            1 => VersionedMagic::GgufV1,
            2 => VersionedMagic::GgufV2,
            3 => VersionedMagic::GgufV3,
            v => return Err(bad(format!("version {v}"))),
        };
        h.v1 = version == 1;
        let tensor_count = h.len()?;
        let kv_count = h.len()?;
        if tensor_count > MAX_ELEMENTS || kv_count > MAX_ELEMENTS {
            return Err(bad(format!("{tensor_count} tensors, {kv_count} metadata entries")));
        }
        let mut metadata = HashMap::new();
        for _ in 0..kv_count {
            let key = h.string()?;
            let ty = h.u32()?;
            let value = h.value(ty, 0)?;
            metadata.insert(key, value);
        }
        let mut tensor_infos = HashMap::new();
        let mut other = HashMap::new();
        for _ in 0..tensor_count {
            let name = h.string()?;
            let n_dims = h.u32()?;
            if n_dims > MAX_DIMS {
                return Err(bad(format!("tensor {name} has {n_dims} dimensions")));
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                shape.push(h.len()? as usize);
            }
            // GGUF lists the innermost dimension first.
            shape.reverse();
            let dtype = h.u32()?;
            let offset = h.u64()?;
            match candle_dtype(dtype) {
                Some(ggml_dtype) => {
                    tensor_infos.insert(name, TensorInfo { ggml_dtype, shape: shape.into(), offset });
                }
                None => {
                    other.insert(name, OtherTensor { dtype, shape, offset });
                }
            }
        }
        let position = h.r.stream_position()?;
        let alignment = match metadata.get("general.alignment") {
            Some(Value::U8(v)) => *v as u64,
            Some(Value::U16(v)) => *v as u64,
            Some(Value::U32(v)) => *v as u64,
            Some(Value::I32(v)) if *v > 0 => *v as u64,
            _ => DEFAULT_ALIGNMENT,
        }
        .max(1);
        let tensor_data_offset = position.div_ceil(alignment) * alignment;
        Ok(Self { content: Content { magic, metadata, tensor_infos, tensor_data_offset }, other })
    }

    /// Opens and parses a GGUF file.
    pub fn open(path: &Path) -> Result<(Self, std::fs::File)> {
        let mut file = std::fs::File::open(path).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
        let gguf = Self::read(&mut file).map_err(|e| e.in_file(path))?;
        Ok((gguf, file))
    }

    /// The raw bytes of a tensor in [`GgufFile::other`], checked against the file's size.
    pub fn read_raw<R: Read + Seek>(&self, r: &mut R, name: &str) -> Result<Option<(OtherTensor, Vec<u8>)>> {
        let Some(t) = self.other.get(name) else { return Ok(None) };
        Ok(Some((t.clone(), t.read(r, self.content.tensor_data_offset, name)?)))
    }
}

impl OtherTensor {
    /// The tensor's bytes from a file whose tensor data starts at `data_offset`.
    pub fn read<R: Read + Seek>(&self, r: &mut R, data_offset: u64, name: &str) -> Result<Vec<u8>> {
        let len = self.byte_len().ok_or_else(|| {
            EngineError::Unsupported(format!("tensor {name} has type {}, which wick cannot run", self.type_name()))
        })?;
        let start = data_offset.saturating_add(self.offset);
        let file_size = r.seek(SeekFrom::End(0))?;
        if start.saturating_add(len as u64) > file_size {
            return Err(EngineError::Load(format!("tensor {name} runs past the end of the file")));
        }
        r.seek(SeekFrom::Start(start))?;
        let mut bytes = vec![0u8; len];
        r.read_exact(&mut bytes)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A GGUF v3 stream with one metadata entry, an F32 tensor and an MXFP4 tensor.
    fn tiny() -> Vec<u8> {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        };
        b.extend(0x4655_4747u32.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "gpt-oss");
        s(&mut b, "gpt-oss.list");
        b.extend(9u32.to_le_bytes());
        b.extend(4u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(7u32.to_le_bytes());
        b.extend(9u32.to_le_bytes());
        s(&mut b, "a");
        b.extend(1u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        s(&mut b, "e");
        b.extend(2u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(GGML_TYPE_MXFP4.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend([1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|f| f.to_le_bytes()));
        b.resize(b.len() + 16, 0);
        b.extend((0..34u8).collect::<Vec<_>>());
        b
    }

    #[test]
    fn reads_metadata_known_tensors_and_mxfp4_raw() {
        let bytes = tiny();
        let mut cur = Cursor::new(bytes);
        let g = GgufFile::read(&mut cur).unwrap();
        assert_eq!(g.content.metadata["general.architecture"].to_string().unwrap(), "gpt-oss");
        let list: Vec<u32> =
            g.content.metadata["gpt-oss.list"].to_vec().unwrap().iter().map(|v| v.to_u32().unwrap()).collect();
        assert_eq!(list, [7, 9]);
        let a = g.content.tensor(&mut cur, "a", &candle_core::Device::Cpu).unwrap();
        assert_eq!(a.dequantize(&candle_core::Device::Cpu).unwrap().to_vec1::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0]);
        let (info, raw) = g.read_raw(&mut cur, "e").unwrap().unwrap();
        assert_eq!(info.shape, [2, 32]);
        assert_eq!(raw, (0..34u8).collect::<Vec<_>>());
        assert!(g.read_raw(&mut cur, "a").unwrap().is_none());
        let mut cut = tiny();
        cut.truncate(cut.len() - 1);
        let g = GgufFile::read(&mut Cursor::new(cut.clone())).unwrap();
        assert!(g.read_raw(&mut Cursor::new(cut), "e").is_err());
    }
}
