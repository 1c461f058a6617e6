//! The tensor artifact format: safetensors, written as a stream so that a features file larger than memory
//! never has to be held whole, and read through a memory map.
//!
//! Canonical form: header keys sorted (a JSON object with sorted keys), header padded with spaces to a
//! multiple of 8 (as the safetensors reference writer does), tensor data in declaration order, little-endian,
//! no `__metadata__`. Equal tensors therefore give equal bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use genrelab_contract::StageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    U32,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::U32 => "U32",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::U32 => 4,
            Dtype::F64 => 8,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }
    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Writes tensors declared up front, filled in order by repeated `write_*` calls.
pub struct TensorWriter {
    path: PathBuf,
    out: BufWriter<File>,
    specs: Vec<TensorSpec>,
    current: usize,
    written: usize,
}

impl TensorWriter {
    pub fn create(path: &Path, specs: Vec<TensorSpec>) -> Result<Self, StageError> {
        let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(StageError::Invalid(format!(
                "{}: duplicate tensor name",
                path.display()
            )));
        }
        let mut header = BTreeMap::new();
        let mut offset = 0usize;
        for spec in &specs {
            let end = offset + spec.bytes();
            header.insert(
                spec.name.clone(),
                serde_json::json!({
                    "dtype": spec.dtype.name(),
                    "shape": spec.shape,
                    "data_offsets": [offset, end],
                }),
            );
            offset = end;
        }
        let mut header =
            serde_json::to_vec(&header).map_err(|e| StageError::Invalid(e.to_string()))?;
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        let file = File::create(path).map_err(|e| StageError::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(&header))
            .map_err(|e| StageError::io(path, e))?;
        let mut writer = TensorWriter {
            path: path.to_path_buf(),
            out,
            specs,
            current: 0,
            written: 0,
        };
        writer.skip_empty();
        Ok(writer)
    }

    fn skip_empty(&mut self) {
        while self.current < self.specs.len() && self.written == self.specs[self.current].bytes() {
            self.current += 1;
            self.written = 0;
        }
    }

    fn write_bytes(&mut self, dtype: Dtype, bytes: &[u8]) -> Result<(), StageError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some(spec) = self.specs.get(self.current) else {
                return Err(StageError::Invalid(format!(
                    "{}: more data written than the declared tensors hold",
                    self.path.display()
                )));
            };
            if spec.dtype != dtype {
                return Err(StageError::Invalid(format!(
                    "{}: tensor `{}` is {}, written as {}",
                    self.path.display(),
                    spec.name,
                    spec.dtype.name(),
                    dtype.name()
                )));
            }
            let take = rest.len().min(spec.bytes() - self.written);
            self.out
                .write_all(&rest[..take])
                .map_err(|e| StageError::io(&self.path, e))?;
            self.written += take;
            rest = &rest[take..];
            self.skip_empty();
        }
        Ok(())
    }

    pub fn write_f32(&mut self, data: &[f32]) -> Result<(), StageError> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_bytes(Dtype::F32, &bytes)
    }

    pub fn write_f64(&mut self, data: &[f64]) -> Result<(), StageError> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_bytes(Dtype::F64, &bytes)
    }

    pub fn write_u32(&mut self, data: &[u32]) -> Result<(), StageError> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_bytes(Dtype::U32, &bytes)
    }

    /// Flushes and checks that every declared tensor was filled.
    pub fn finish(mut self) -> Result<(), StageError> {
        if self.current < self.specs.len() {
            return Err(StageError::Invalid(format!(
                "{}: tensor `{}` is incomplete",
                self.path.display(),
                self.specs[self.current].name
            )));
        }
        self.out.flush().map_err(|e| StageError::io(&self.path, e))
    }
}

/// A read-only, memory-mapped tensor file.
pub struct TensorFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

/// One tensor's shape and raw little-endian bytes.
pub struct Tensor<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    data: &'a [u8],
}

impl Tensor<'_> {
    /// Number of rows (first dimension); 0 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
    /// Elements per row.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
    /// Row `i` decoded into `buf` (resized to fit).
    pub fn row_f32_into(&self, i: usize, buf: &mut Vec<f32>) {
        let n = self.row_len();
        let bytes = &self.data[i * n * 4..(i + 1) * n * 4];
        buf.clear();
        buf.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    pub fn to_f32(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    pub fn to_f64(&self) -> Vec<f64> {
        self.data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    }
    pub fn to_u32(&self) -> Vec<u32> {
        self.data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self, StageError> {
        let file = File::open(path).map_err(|e| StageError::io(path, e))?;
        // SAFETY: store objects are immutable once published (written to a temp name, then renamed).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| StageError::io(path, e))?;
        safetensors::SafeTensors::deserialize(&map)
            .map_err(|e| StageError::bad_file(path, format!("not a valid tensor file: {e}")))?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            map,
        })
    }

    pub fn names(&self) -> Vec<String> {
        match safetensors::SafeTensors::deserialize(&self.map) {
            Ok(st) => {
                let mut names: Vec<String> = st.names().into_iter().cloned().collect();
                names.sort();
                names
            }
            Err(_) => Vec::new(),
        }
    }

    pub fn tensor(&self, name: &str) -> Result<Tensor<'_>, StageError> {
        let st = safetensors::SafeTensors::deserialize(&self.map)
            .map_err(|e| StageError::bad_file(&self.path, e.to_string()))?;
        let view = st
            .tensor(name)
            .map_err(|_| StageError::bad_file(&self.path, format!("no tensor named `{name}`")))?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => Dtype::F32,
            safetensors::Dtype::F64 => Dtype::F64,
            safetensors::Dtype::U32 => Dtype::U32,
            other => {
                return Err(StageError::bad_file(
                    &self.path,
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                ))
            }
        };
        Ok(Tensor {
            dtype,
            shape: view.shape().to_vec(),
            data: view.data(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_writes_read_back_and_are_byte_stable() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let path = dir.path().join(name);
            let mut w = TensorWriter::create(
                &path,
                vec![
                    TensorSpec::new("b", Dtype::F32, vec![2, 3]),
                    TensorSpec::new("a", Dtype::U32, vec![2]),
                    TensorSpec::new("empty", Dtype::F32, vec![0, 3]),
                ],
            )
            .unwrap();
            w.write_f32(&[1.0, 2.0]).unwrap();
            w.write_f32(&[3.0, 4.0, 5.0, 6.0]).unwrap();
            w.write_u32(&[7, 8]).unwrap();
            w.finish().unwrap();
            std::fs::read(path).unwrap()
        };
        assert_eq!(write("x"), write("y"));
        let f = TensorFile::open(&dir.path().join("x")).unwrap();
        assert_eq!(f.names(), vec!["a", "b", "empty"]);
        let b = f.tensor("b").unwrap();
        assert_eq!(b.shape, vec![2, 3]);
        let mut row = Vec::new();
        b.row_f32_into(1, &mut row);
        assert_eq!(row, vec![4.0, 5.0, 6.0]);
        assert_eq!(f.tensor("a").unwrap().to_u32(), vec![7, 8]);
        assert_eq!(f.tensor("empty").unwrap().rows(), 0);
    }

    #[test]
    fn wrong_dtype_overflow_and_short_writes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let spec = || vec![TensorSpec::new("t", Dtype::F32, vec![2])];
        let mut w = TensorWriter::create(&path, spec()).unwrap();
        assert!(w.write_u32(&[1]).is_err());
        let mut w = TensorWriter::create(&path, spec()).unwrap();
        assert!(w.write_f32(&[1.0, 2.0, 3.0]).is_err());
        let mut w = TensorWriter::create(&path, spec()).unwrap();
        w.write_f32(&[1.0]).unwrap();
        assert!(w.finish().is_err());
    }
}
