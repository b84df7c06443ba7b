//! Image classification data: Fashion-MNIST and MNIST from gzipped (or
//! plain) IDX files, CIFAR-10 from its binary batches; a fixed, seeded
//! train/validation split; normalisation; the resolution and subset knobs of
//! proxy fidelities; random crop and flip.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::TrainError;

/// Where the Debian package `dataset-fashion-mnist` puts its files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Which data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    FashionMnist,
    Mnist,
    Cifar10,
}

impl DatasetKind {
    /// Per-channel mean and std of the training images (in [0, 1]).
    pub fn stats(self) -> (&'static [f64], &'static [f64]) {
        match self {
            DatasetKind::FashionMnist => (&[0.2860], &[0.3530]),
            DatasetKind::Mnist => (&[0.1307], &[0.3081]),
            DatasetKind::Cifar10 => (&[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616]),
        }
    }
    pub fn classes(self) -> i64 {
        10
    }
}

/// Images as `u8` in `[N, C, H, W]` order, and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct RawImages {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    pub shape: [usize; 4],
}

/// Training and test images of a data set.
pub struct RawDataset {
    pub kind: DatasetKind,
    pub train: RawImages,
    pub test: RawImages,
}

fn data_err(path: &Path, msg: impl std::fmt::Display) -> TrainError {
    TrainError::Data(format!("{}: {msg}", path.display()))
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, TrainError> {
    let raw = std::fs::read(path).map_err(|e| data_err(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| data_err(path, format!("corrupt gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Reads one IDX file (`.gz` or plain); returns its dimensions and bytes.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), TrainError> {
    let bytes = read_maybe_gz(path)?;
    if bytes.is_empty() {
        return Err(data_err(path, "empty file (not an IDX file)"));
    }
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(data_err(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(data_err(path, format!("IDX element type 0x{:02x} is not unsigned bytes (0x08)", bytes[2])));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(data_err(path, "IDX header declares 0 dimensions"));
    }
    if bytes.len() < 4 + 4 * ndim {
        return Err(data_err(
            path,
            format!("truncated IDX header: {ndim} dimensions need {} header bytes, the file holds {}", 4 + 4 * ndim, bytes.len()),
        ));
    }
    let dims: Vec<usize> = bytes[4..4 + 4 * ndim].chunks_exact(4).map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize).collect();
    let body = &bytes[4 + 4 * ndim..];
    let Some(n) = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
        return Err(data_err(path, format!("IDX header dimensions {dims:?} are too large (the file holds {} bytes of data)", body.len())));
    };
    if body.len() != n {
        return Err(data_err(path, format!("IDX header promises {n} bytes of data ({dims:?}), the file holds {}", body.len())));
    }
    Ok((dims, body.to_vec()))
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()].iter().map(|n| dir.join(n)).find(|p| p.exists())
}

fn read_idx_pair(dir: &Path, images: &str, labels: &str) -> Result<RawImages, TrainError> {
    let ip = find(dir, images).ok_or_else(|| data_err(&dir.join(images), "missing (looked for .gz and plain)"))?;
    let lp = find(dir, labels).ok_or_else(|| data_err(&dir.join(labels), "missing (looked for .gz and plain)"))?;
    let (idims, pixels) = read_idx(&ip)?;
    let (ldims, labels) = read_idx(&lp)?;
    if idims.len() != 3 {
        return Err(data_err(&ip, format!("images need 3 dimensions [N, H, W], the IDX header declares {} ({idims:?})", idims.len())));
    }
    if ldims.len() != 1 {
        return Err(data_err(&lp, format!("labels need 1 dimension [N], the IDX header declares {} ({ldims:?})", ldims.len())));
    }
    if idims[0] == 0 {
        return Err(data_err(&ip, "the file holds no images (N = 0)"));
    }
    if idims[1] == 0 || idims[2] == 0 {
        return Err(data_err(&ip, format!("images of {}×{} pixels are empty", idims[1], idims[2])));
    }
    if idims[0] != ldims[0] {
        return Err(data_err(&lp, format!("{} labels for {} images", ldims[0], idims[0])));
    }
    if let Some(bad) = labels.iter().find(|&&l| l >= 10) {
        return Err(data_err(&lp, format!("label {bad} out of range 0..10")));
    }
    Ok(RawImages { pixels, labels, shape: [idims[0], 1, idims[1], idims[2]] })
}

/// Reads CIFAR-10's binary batches (`data_batch_1.bin` … `test_batch.bin`).
fn read_cifar(dir: &Path) -> Result<(RawImages, RawImages), TrainError> {
    let dir = if dir.join("cifar-10-batches-bin").is_dir() { dir.join("cifar-10-batches-bin") } else { dir.to_path_buf() };
    let read = |names: &[String]| -> Result<RawImages, TrainError> {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for name in names {
            let p = dir.join(name);
            let bytes = std::fs::read(&p).map_err(|e| data_err(&p, e))?;
            if bytes.is_empty() || bytes.len() % 3073 != 0 {
                return Err(data_err(&p, format!("{} bytes is not a whole number of 3073-byte CIFAR records", bytes.len())));
            }
            for rec in bytes.chunks_exact(3073) {
                if rec[0] >= 10 {
                    return Err(data_err(&p, format!("label {} out of range 0..10", rec[0])));
                }
                labels.push(rec[0]);
                pixels.extend_from_slice(&rec[1..]);
            }
        }
        Ok(RawImages { shape: [labels.len(), 3, 32, 32], pixels, labels })
    };
    let train: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
    Ok((read(&train)?, read(&["test_batch.bin".to_string()])?))
}

/// The canonical download addresses of the IDX data sets.
fn canonical_url(kind: DatasetKind) -> Option<&'static str> {
    match kind {
        DatasetKind::FashionMnist => Some("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        DatasetKind::Mnist => Some("https://storage.googleapis.com/cvdf-datasets/mnist/"),
        DatasetKind::Cifar10 => None,
    }
}

/// Downloads the four IDX files of `kind` into `dir` (those not there yet)
/// from the data set's canonical address. Needs a network; not used by tests.
pub fn download(kind: DatasetKind, dir: &Path) -> Result<(), TrainError> {
    let base = canonical_url(kind)
        .ok_or_else(|| TrainError::Data(format!("{kind:?} cannot be downloaded by archsearch; put its files in `data_dir`")))?;
    std::fs::create_dir_all(dir).map_err(|e| data_err(dir, e))?;
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        let file = dir.join(format!("{name}.gz"));
        if file.exists() {
            continue;
        }
        let url = format!("{base}{name}.gz");
        tracing::info!(%url, "downloading");
        let mut body = Vec::new();
        ureq::get(&url)
            .call()
            .map_err(|e| TrainError::Data(format!("downloading {url}: {e}")))?
            .into_reader()
            .read_to_end(&mut body)
            .map_err(|e| TrainError::Data(format!("downloading {url}: {e}")))?;
        let tmp = file.with_extension("gz.part");
        std::fs::write(&tmp, &body).map_err(|e| data_err(&tmp, e))?;
        std::fs::rename(&tmp, &file).map_err(|e| data_err(&file, e))?;
    }
    Ok(())
}

impl RawDataset {
    /// Loads a data set from `dir`, or (Fashion-MNIST) the Debian package's
    /// folder. With `download`, missing IDX files are first fetched into `dir`.
    pub fn load_or_download(kind: DatasetKind, dir: Option<&Path>, download_missing: bool) -> Result<Self, TrainError> {
        if let (true, Some(d)) = (download_missing, dir) {
            download(kind, d)?;
        }
        Self::load(kind, dir)
    }

    /// Loads a data set from `dir`, or (Fashion-MNIST) the Debian package's folder.
    pub fn load(kind: DatasetKind, dir: Option<&Path>) -> Result<Self, TrainError> {
        let dir: PathBuf = match (dir, kind) {
            (Some(d), _) => d.to_path_buf(),
            (None, DatasetKind::FashionMnist) => PathBuf::from(DEBIAN_FASHION_MNIST),
            (None, k) => return Err(TrainError::Data(format!("{k:?} needs `data_dir` in [task]"))),
        };
        if !dir.is_dir() {
            let hint = if kind == DatasetKind::FashionMnist && dir == Path::new(DEBIAN_FASHION_MNIST) {
                " (install the Debian package dataset-fashion-mnist, or set `data_dir`)"
            } else {
                ""
            };
            let what = if hint.is_empty() { "data folder (`data_dir`) not found" } else { "data folder not found" };
            return Err(data_err(&dir, format!("{what}{hint}")));
        }
        let (train, test) = match kind {
            DatasetKind::FashionMnist | DatasetKind::Mnist => {
                let train = read_idx_pair(&dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?;
                let test = read_idx_pair(&dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
                if test.shape[1..] != train.shape[1..] {
                    let path = find(&dir, "t10k-images-idx3-ubyte").unwrap_or_else(|| dir.join("t10k-images-idx3-ubyte"));
                    let [_, _, h, w] = test.shape;
                    return Err(data_err(
                        &path,
                        format!("test images are {h}×{w} pixels, the training images {}×{}", train.shape[2], train.shape[3]),
                    ));
                }
                (train, test)
            }
            DatasetKind::Cifar10 => read_cifar(&dir)?,
        };
        Ok(RawDataset { kind, train, test })
    }
}

/// Normalised images and labels on a device.
pub struct Split {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Split {
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Train, validation and test splits, ready for training.
pub struct Data {
    pub train: Split,
    pub valid: Split,
    pub test: Split,
    pub classes: i64,
    pub channels: i64,
    pub resolution: i64,
}

// SAFETY: a `Data` is never mutated after `Data::prepare` returns: its
// tensors are only read (narrow, index_select, shape queries), and libtorch
// supports concurrent reads of one tensor from several threads. Sharing it
// lets concurrent trials use one copy of the data set.
unsafe impl Sync for Data {}

fn to_split(raw: &RawImages, idx: &[usize], kind: DatasetKind, resolution: Option<i64>, device: Device) -> Split {
    let [_, c, h, w] = raw.shape;
    let per = c * h * w;
    let mut pixels = Vec::with_capacity(idx.len() * per);
    let mut labels = Vec::with_capacity(idx.len());
    for &i in idx {
        pixels.extend_from_slice(&raw.pixels[i * per..(i + 1) * per]);
        labels.push(raw.labels[i] as i64);
    }
    let (mean, std) = kind.stats();
    let mean = Tensor::from_slice(mean).view([1, c as i64, 1, 1]);
    let std = Tensor::from_slice(std).view([1, c as i64, 1, 1]);
    let mut x = Tensor::from_slice(&pixels).view([idx.len() as i64, c as i64, h as i64, w as i64]).to_kind(Kind::Float) / 255.0;
    x = (x - mean.to_kind(Kind::Float)) / std.to_kind(Kind::Float);
    if let Some(r) = resolution {
        if r != h as i64 || r != w as i64 {
            x = x.upsample_bilinear2d([r, r], false, None, None);
        }
    }
    Split { images: x.to_device(device), labels: Tensor::from_slice(&labels).to_device(device) }
}

impl Data {
    /// Splits the training images into train and validation (a seeded
    /// permutation, fixed by `split_seed`, so every trial sees the same
    /// split), keeps `fraction` of the training part, and resizes to
    /// `resolution` if given.
    pub fn prepare(
        raw: &RawDataset,
        valid_fraction: f64,
        split_seed: u64,
        fraction: f64,
        resolution: Option<i64>,
        device: Device,
    ) -> Result<Self, TrainError> {
        let n = raw.train.shape[0];
        let n_valid = ((n as f64) * valid_fraction).round() as usize;
        if n_valid == 0 || n_valid >= n {
            return Err(TrainError::Config(format!("valid_fraction = {valid_fraction} leaves no train or no validation images")));
        }
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(TrainError::Config(format!("fraction = {fraction} must be in (0, 1]")));
        }
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(split_seed));
        let (valid, train) = perm.split_at(n_valid);
        let n_train = ((train.len() as f64 * fraction).round() as usize).max(1);
        let test: Vec<usize> = (0..raw.test.shape[0]).collect();
        let res = resolution.unwrap_or(raw.train.shape[2] as i64);
        Ok(Data {
            train: to_split(&raw.train, &train[..n_train], raw.kind, resolution, device),
            valid: to_split(&raw.train, valid, raw.kind, resolution, device),
            test: to_split(&raw.test, &test, raw.kind, resolution, device),
            classes: raw.kind.classes(),
            channels: raw.train.shape[1] as i64,
            resolution: res,
        })
    }
}

/// Random crop (zero padding `pad`) and horizontal flip of a batch, one draw
/// per image from `rng`.
pub fn augment(x: &Tensor, pad: i64, flip: bool, rng: &mut rand_chacha::ChaCha8Rng) -> Tensor {
    use rand::Rng as _;
    let size = x.size();
    let (n, h, w) = (size[0], size[2], size[3]);
    let padded = if pad > 0 { x.constant_pad_nd([pad, pad, pad, pad]) } else { x.shallow_clone() };
    let out: Vec<Tensor> = (0..n)
        .map(|i| {
            let (dy, dx) = if pad > 0 { (rng.random_range(0..=2 * pad), rng.random_range(0..=2 * pad)) } else { (0, 0) };
            let img = padded.get(i).narrow(1, dy, h).narrow(2, dx, w);
            if flip && rng.random_bool(0.5) {
                img.flip([2])
            } else {
                img
            }
        })
        .collect();
    Tensor::stack(&out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Writes a tiny Fashion-MNIST-shaped data set (n train, n/2 test images of 4×4).
    pub fn write_tiny_mnist(dir: &Path, n: u32) {
        let img: Vec<u8> = (0..n * 16).map(|i| (i % 251) as u8).collect();
        let lab: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gz(&idx(&[n, 4, 4], &img))).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gz(&idx(&[n], &lab))).unwrap();
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx(&[n / 2, 4, 4], &img[..(n / 2 * 16) as usize])).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx(&[n / 2], &lab[..(n / 2) as usize])).unwrap();
    }

    #[test]
    fn reads_gz_and_plain_idx_and_splits() {
        let d = tempfile::tempdir().unwrap();
        write_tiny_mnist(d.path(), 60);
        let raw = RawDataset::load(DatasetKind::FashionMnist, Some(d.path())).unwrap();
        assert_eq!(raw.train.shape, [60, 1, 4, 4]);
        assert_eq!(raw.test.shape, [30, 1, 4, 4]);
        let data = Data::prepare(&raw, 1.0 / 6.0, 0, 0.5, Some(8), Device::Cpu).unwrap();
        assert_eq!((data.train.len(), data.valid.len(), data.test.len()), (25, 10, 30));
        assert_eq!(data.train.images.size(), vec![25, 1, 8, 8]);
        // The split is fixed by its seed.
        let again = Data::prepare(&raw, 1.0 / 6.0, 0, 0.5, Some(8), Device::Cpu).unwrap();
        assert!(again.valid.labels.equal(&data.valid.labels));
    }

    #[test]
    fn corrupt_and_truncated_files_give_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        write_tiny_mnist(d.path(), 20);
        let p = d.path().join("train-images-idx3-ubyte.gz");
        // Truncated body.
        std::fs::write(&p, gz(&idx(&[20, 4, 4], &[1; 100]))).unwrap();
        let e = RawDataset::load(DatasetKind::FashionMnist, Some(d.path())).err().unwrap().to_string();
        assert!(e.contains("train-images-idx3-ubyte.gz") && e.contains("holds 100"), "{e}");
        // Corrupt gzip.
        let mut bytes = gz(&idx(&[20, 4, 4], &[1; 320]));
        let n = bytes.len();
        bytes.truncate(n / 2);
        std::fs::write(&p, bytes).unwrap();
        let e = RawDataset::load(DatasetKind::FashionMnist, Some(d.path())).err().unwrap().to_string();
        assert!(e.contains("train-images-idx3-ubyte.gz") && e.contains("gzip"), "{e}");
        // Bad magic.
        std::fs::write(&p, b"hello world, not idx").unwrap();
        let e = RawDataset::load(DatasetKind::FashionMnist, Some(d.path())).err().unwrap().to_string();
        assert!(e.contains("magic"), "{e}");
        // Missing file.
        std::fs::remove_file(&p).unwrap();
        let e = RawDataset::load(DatasetKind::FashionMnist, Some(d.path())).err().unwrap().to_string();
        assert!(e.contains("train-images-idx3-ubyte") && e.contains("missing"), "{e}");
    }

    /// Malformed headers and shapes are errors naming the file at fault
    /// (never a panic, never a data set that fails later).
    #[test]
    fn malformed_headers_and_shapes_name_the_file_at_fault() {
        let d = tempfile::tempdir().unwrap();
        let load = |file: &str, bytes: Vec<u8>| {
            write_tiny_mnist(d.path(), 20);
            std::fs::write(d.path().join(file), bytes).unwrap();
            RawDataset::load(DatasetKind::FashionMnist, Some(d.path())).err().expect("a malformed file must be refused").to_string()
        };
        let labels: Vec<u8> = (0..20).map(|i| i % 10).collect();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("t10k-labels-idx1-ubyte", vec![], "empty file"),
            ("train-labels-idx1-ubyte.gz", gz(&[0, 0, 8, 0]), "0 dimensions"),
            ("t10k-images-idx3-ubyte", vec![0, 0, 8, 3, 0, 0, 0, 10, 0], "truncated IDX header: 3 dimensions need 16"),
            ("train-images-idx3-ubyte.gz", gz(&idx(&[u32::MAX; 3], &[])), "too large"),
            ("train-images-idx3-ubyte.gz", gz(&idx(&[20, 16], &[0; 320])), "images need 3 dimensions"),
            ("train-labels-idx1-ubyte.gz", gz(&idx(&[20, 1], &labels)), "labels need 1 dimension"),
            ("train-labels-idx1-ubyte.gz", gz(&idx(&[19], &labels[..19])), "19 labels for 20 images"),
            ("t10k-labels-idx1-ubyte", idx(&[10], &[12; 10]), "label 12 out of range"),
            ("t10k-images-idx3-ubyte", idx(&[10, 5, 5], &[0; 250]), "test images are 5×5 pixels, the training images 4×4"),
            ("t10k-images-idx3-ubyte", idx(&[10, 0, 4], &[]), "0×4 pixels are empty"),
        ];
        for (file, bytes, needle) in cases {
            let e = load(file, bytes);
            assert!(e.contains(file) && e.contains(needle), "{file}: {e}");
        }
        // No images at all: named at the images file, not a split that fails later.
        write_tiny_mnist(d.path(), 20);
        std::fs::write(d.path().join("train-images-idx3-ubyte.gz"), gz(&idx(&[0, 4, 4], &[]))).unwrap();
        std::fs::write(d.path().join("train-labels-idx1-ubyte.gz"), gz(&idx(&[0], &[]))).unwrap();
        let e = RawDataset::load(DatasetKind::FashionMnist, Some(d.path())).err().unwrap().to_string();
        assert!(e.contains("train-images-idx3-ubyte.gz") && e.contains("no images"), "{e}");
        let e = RawDataset::load(DatasetKind::Mnist, Some(&d.path().join("nope"))).err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("`data_dir`"), "{e}");
    }

    #[test]
    fn cifar_batches_read_and_reject_bad_sizes() {
        let d = tempfile::tempdir().unwrap();
        let rec = |label: u8| {
            let mut r = vec![label];
            r.extend((0..3072).map(|i| (i % 256) as u8));
            r
        };
        for i in 1..=5 {
            std::fs::write(d.path().join(format!("data_batch_{i}.bin")), [rec(1), rec(2)].concat()).unwrap();
        }
        std::fs::write(d.path().join("test_batch.bin"), rec(3)).unwrap();
        let raw = RawDataset::load(DatasetKind::Cifar10, Some(d.path())).unwrap();
        assert_eq!(raw.train.shape, [10, 3, 32, 32]);
        assert_eq!(raw.test.labels, vec![3]);
        std::fs::write(d.path().join("test_batch.bin"), &rec(3)[..3000]).unwrap();
        let e = RawDataset::load(DatasetKind::Cifar10, Some(d.path())).err().unwrap().to_string();
        assert!(e.contains("test_batch.bin") && e.contains("3073"), "{e}");
    }

    #[test]
    fn augment_keeps_shape() {
        let x = Tensor::arange(2 * 16, (Kind::Float, Device::Cpu)).view([2, 1, 4, 4]);
        let y = augment(&x, 1, true, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
        assert_eq!(y.size(), vec![2, 1, 4, 4]);
    }
}
