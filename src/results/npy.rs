//! The .npy files of a results directory: little-endian f32 and i32 arrays in C order with the
//! header numpy writes (format 1.0). Our own files are checked byte for byte against the header
//! their shape implies and against their exact length, so a damaged or truncated file is an
//! error naming it, never data read from the wrong offset.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    I32,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Self::F32 => "<f4",
            Self::I32 => "<i4",
        }
    }
}

/// The header numpy writes for a C-order array of `shape` (padded so the data starts on a
/// 64-byte boundary).
pub fn header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}", dtype.descr());
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// An array file being filled in place: its header is written, values go at element offsets.
pub struct ArrayFile {
    file: File,
    data_offset: u64,
    len: usize,
}

impl ArrayFile {
    /// Creates `path` anew (whatever was there, a link included, is removed first, never written
    /// through) holding `shape` filled with NaN (f32) or 0 (i32).
    pub fn create(path: &Path, dtype: Dtype, shape: &[usize]) -> Result<Self> {
        crate::limits::product(&format!("{}: shape", path.display()), shape)?;
        super::remove_if_present(path)?;
        let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let head = header(dtype, shape);
        let len: usize = shape.iter().product();
        let fill = match dtype {
            Dtype::F32 => f32::NAN.to_le_bytes(),
            Dtype::I32 => 0i32.to_le_bytes(),
        };
        let mut w = std::io::BufWriter::new(&mut file);
        w.write_all(&head)?;
        for _ in 0..len {
            w.write_all(&fill)?;
        }
        w.flush().with_context(|| format!("writing {}", path.display()))?;
        drop(w);
        Ok(Self { file, data_offset: head.len() as u64, len })
    }

    /// Opens an existing file for more writes, after checking it is exactly the array expected.
    pub fn open(path: &Path, dtype: Dtype, shape: &[usize]) -> Result<Self> {
        let file = super::open_own(path, true).with_context(|| format!("opening {}", path.display()))?;
        let data_offset = check(&file, path, dtype, shape)?;
        Ok(Self { file, data_offset, len: shape.iter().product() })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes little-endian 4-byte `values` from element `offset` on.
    pub fn write_at(&self, offset: usize, values: &[[u8; 4]]) -> Result<()> {
        if offset + values.len() > self.len {
            bail!("writing {} values at {offset} overruns an array of {}", values.len(), self.len);
        }
        self.file.write_all_at(values.as_flattened(), self.data_offset + 4 * offset as u64)?;
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        Ok(self.file.sync_all()?)
    }
}

/// Checks that `file` holds exactly an array of `dtype` and `shape`; its data offset.
fn check(file: &File, path: &Path, dtype: Dtype, shape: &[usize]) -> Result<u64> {
    let want = header(dtype, shape);
    let size = file.metadata()?.len();
    // Checked: a shape whose product wraps to 0 must not pass for an empty array.
    let cells = crate::limits::product(&format!("{}: shape", path.display()), shape)?;
    let expected = (cells as u64).checked_mul(4).and_then(|b| b.checked_add(want.len() as u64)).with_context(|| format!("{}: shape {shape:?} is larger than any file", path.display()))?;
    let mut got = vec![0; want.len().min(size as usize)];
    file.read_exact_at(&mut got, 0).with_context(|| format!("reading {}", path.display()))?;
    if got != want {
        let found = read_shape(path).map_or_else(|e| format!("{e:#}"), |(d, s)| format!("a {d:?} array of shape {s:?}"));
        bail!("{} is not the {dtype:?} array of shape {shape:?} this run writes (found {found})", path.display());
    }
    if size != expected {
        bail!("{} is {size} bytes, not the {expected} of a {dtype:?} array of shape {shape:?} (truncated or damaged)", path.display());
    }
    Ok(want.len() as u64)
}

/// Checks `path` is exactly the complete array the manifest says.
pub fn validate(path: &Path, dtype: Dtype, shape: &[usize]) -> Result<()> {
    let file = super::open_own(path, false).with_context(|| format!("opening {}", path.display()))?;
    check(&file, path, dtype, shape).map(|_| ())
}

/// Chosen elements (flat indices) of the f32 array `path`, which must be exactly of `shape`:
/// read in place, not the whole array.
pub fn read_cells(path: &Path, shape: &[usize], cells: &[usize]) -> Result<Vec<f32>> {
    let file = super::open_own(path, false).with_context(|| format!("opening {}", path.display()))?;
    let offset = check(&file, path, Dtype::F32, shape)?;
    let len: usize = shape.iter().product();
    cells
        .iter()
        .map(|&c| {
            if c >= len {
                bail!("element {c} is past the {len} of {}", path.display());
            }
            let mut b = [0; 4];
            file.read_exact_at(&mut b, offset + 4 * c as u64).with_context(|| format!("reading {}", path.display()))?;
            Ok(f32::from_le_bytes(b))
        })
        .collect()
}

/// The dtype and shape in any .npy file's header (written by numpy or by us).
fn read_shape(path: &Path) -> Result<(String, Vec<usize>)> {
    let file = super::open_own(path, false).with_context(|| format!("opening {}", path.display()))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).with_context(|| format!("{} has no .npy header", path.display()))?;
    Ok((npy.dtype().descr(), npy.shape().iter().map(|&d| d as usize).collect()))
}

/// An f32 array from a .npy file (any writer's: a user's file, followed if it is a link), with its shape.
pub fn read_f32(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    read(path, false)
}

/// An i32 array of a results directory (`open_own`).
pub fn read_own_i32(path: &Path) -> Result<(Vec<i32>, Vec<usize>)> {
    read(path, true)
}

/// An f32 array of a results directory (`open_own`: never through a link).
pub fn read_own_f32(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    read(path, true)
}

fn read<T: npyz::Deserialize + Copy>(path: &Path, own: bool) -> Result<(Vec<T>, Vec<usize>)> {
    let mut bytes = Vec::new();
    let file = if own { super::open_own(path, false) } else { File::open(path) };
    file.and_then(|mut f| f.read_to_end(&mut bytes)).with_context(|| format!("opening {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).with_context(|| format!("{} is not a .npy file", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fortran = npy.order() == npyz::Order::Fortran;
    let data = npy.into_vec::<T>().with_context(|| format!("{} does not hold a whole {} array", path.display(), std::any::type_name::<T>()))?;
    Ok((if fortran { c_order(data, &shape) } else { data }, shape))
}

/// A column-major (Fortran-order, numpy's `np.asfortranarray`) array's elements in row-major order.
fn c_order<T: Copy>(data: Vec<T>, shape: &[usize]) -> Vec<T> {
    let strides: Vec<usize> = shape.iter().scan(1, |s, &d| Some(std::mem::replace(s, *s * d))).collect();
    let mut index = vec![0; shape.len()];
    let mut out = Vec::with_capacity(data.len());
    for _ in 0..data.len() {
        out.push(data[index.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()]);
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

/// An element type of the arrays we write.
pub trait Element: Copy {
    const DTYPE: Dtype;
    fn bytes(self) -> [u8; 4];
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

impl Element for i32 {
    const DTYPE: Dtype = Dtype::I32;
    fn bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

/// A complete array as .npy bytes.
pub fn encode<T: Element>(shape: &[usize], data: &[T]) -> Vec<u8> {
    let mut out = header(T::DTYPE, shape);
    for &v in data {
        out.extend_from_slice(&v.bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_numpys_and_encoded_arrays_read_back() {
        let h = header(Dtype::F32, &[3, 11]);
        assert_eq!(h.len() % 64, 0);
        assert!(String::from_utf8_lossy(&h).contains("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 11), }"));
        assert!(String::from_utf8_lossy(&header(Dtype::I32, &[5])).contains("'shape': (5,)"));
        let dir = std::env::temp_dir().join(format!("patchbay-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        std::fs::write(&path, encode(&[2, 2], &[1.0f32, 2.0, 3.0, f32::NAN])).unwrap();
        let (v, s) = read_f32(&path).unwrap();
        assert_eq!((v[..3].to_vec(), s), (vec![1.0, 2.0, 3.0], vec![2, 2]));
        validate(&path, Dtype::F32, &[2, 2]).unwrap();
        let err = format!("{:#}", validate(&path, Dtype::F32, &[4]).unwrap_err());
        assert!(err.contains("a.npy is not the F32 array of shape [4]") && err.contains("shape [2, 2]"), "{err}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = format!("{:#}", validate(&path, Dtype::F32, &[2, 2]).unwrap_err());
        assert!(err.contains("truncated"), "{err}");
        // numpy's Fortran order (np.asfortranarray of [[0, 1, 2], [3, 4, 5]] stores 0 3 1 4 2 5),
        // read back in row-major order; 3-D too.
        let fortran = |shape: &str, values: &[f32]| {
            let dict = format!("{{'descr': '<f4', 'fortran_order': True, 'shape': {shape}, }}");
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            let padded = (10 + dict.len() + 1).next_multiple_of(64) - 10;
            bytes.extend_from_slice(&(padded as u16).to_le_bytes());
            bytes.extend_from_slice(format!("{dict:<width$}\n", width = padded - 1).as_bytes());
            values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
            std::fs::write(&path, bytes).unwrap();
            read_f32(&path).unwrap()
        };
        assert_eq!(fortran("(2, 3)", &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]), (vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], vec![2, 3]));
        // [2, 2, 2] with element (i, j, k) = 4i + 2j + k, stored with i fastest.
        let stored: Vec<f32> = (0..8).map(|f| (4 * (f % 2) + 2 * (f / 2 % 2) + f / 4) as f32).collect();
        assert_eq!(fortran("(2, 2, 2)", &stored).0, (0..8).map(|v| v as f32).collect::<Vec<_>>());
    }
}
