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

/// Ranks (1-based), ties sharing their average rank.
pub fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's ρ: the Pearson correlation of the (tie-averaged) ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Kendall's τ-b (ties handled as in `scipy.stats.kendalltau`).
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    let (mut concordant, mut discordant, mut tie_x, mut tie_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i].total_cmp(&x[j]) as i32;
            let dy = y[i].total_cmp(&y[j]) as i32;
            match (dx, dy) {
                (0, 0) => {}
                (0, _) => tie_x += 1,
                (_, 0) => tie_y += 1,
                _ if dx == dy => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let c_d = (concordant - discordant) as f64;
    let denom = (((concordant + discordant + tie_x) as f64) * ((concordant + discordant + tie_y) as f64)).sqrt();
    c_d / denom
}

/// Indices of the `k` largest values (ties: lower index first).
pub fn top_k(xs: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[b].total_cmp(&xs[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Fraction of the target's top `k` that are also in the proxy's top `k`.
pub fn top_k_overlap(proxy: &[f64], target: &[f64], k: usize) -> f64 {
    let p: std::collections::HashSet<usize> = top_k(proxy, k).into_iter().collect();
    top_k(target, k).iter().filter(|i| p.contains(i)).count() as f64 / k.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_correlations_match_scipy() {
        // Values computed with scipy 1.x: kendalltau (tau-b) and spearmanr.
        let x = [1.0, 2.0, 2.0, 3.0, 5.0, 4.0];
        let y = [1.0, 3.0, 2.0, 2.0, 6.0, 5.0];
        assert!((kendall_tau_b(&x, &y) - 0.7857142857142858).abs() < 1e-12, "{}", kendall_tau_b(&x, &y));
        assert!((spearman(&x, &y) - 0.8676470588235294).abs() < 1e-12, "{}", spearman(&x, &y));
        let rev: Vec<f64> = x.iter().map(|v| -v).collect();
        assert!((kendall_tau_b(&x, &rev) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
    }

    #[test]
    fn top_k_and_overlap() {
        let t = [0.1, 0.9, 0.5, 0.7];
        assert_eq!(top_k(&t, 2), vec![1, 3]);
        assert_eq!(top_k_overlap(&[0.9, 0.8, 0.1, 0.2], &t, 2), 0.5);
        assert_eq!(top_k_overlap(&[0.9, 0.1, 0.8, 0.2], &t, 2), 0.0);
        assert_eq!(top_k_overlap(&t, &t, 3), 1.0);
    }

    #[test]
    fn mean_and_std() {
        assert_eq!(mean(&[1.0, 2.0, 3.0]), 2.0);
        assert!((std(&[1.0, 3.0]) - 1.0).abs() < 1e-12);
    }
}
