//! Small statistics used by reports and benchmarks.

/// Arithmetic mean (NaN for an empty slice).
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Population standard deviation (as `numpy.std`, which the NAS-Bench-201
/// paper's tables use).
pub fn std(xs: &[f64]) -> f64 {
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mean_and_std() {
        assert_eq!(super::mean(&[1.0, 2.0, 3.0]), 2.0);
        assert!((super::std(&[1.0, 3.0]) - 1.0).abs() < 1e-12);
    }
}
