//! Compact strategy states: a JSON header followed by raw `f32` arrays.

use archsearch_core::StrategyError;

pub fn pack<T: serde::Serialize>(header: &T, arrays: &[&[f32]]) -> Result<Vec<u8>, StrategyError> {
    let head = serde_json::to_vec(header).map_err(|e| StrategyError::State(e.to_string()))?;
    let mut out = Vec::with_capacity(8 + head.len() + arrays.iter().map(|a| 4 + 4 * a.len()).sum::<usize>());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&(arrays.len() as u32).to_le_bytes());
    for a in arrays {
        out.extend_from_slice(&(a.len() as u32).to_le_bytes());
        for x in *a {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    Ok(out)
}

pub fn unpack<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(T, Vec<Vec<f32>>), StrategyError> {
    let bad = || StrategyError::State("truncated controller state".into());
    let mut pos = 0usize;
    let u32_at = |pos: &mut usize| -> Result<usize, StrategyError> {
        let b = bytes.get(*pos..*pos + 4).ok_or_else(bad)?;
        *pos += 4;
        Ok(u32::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let n = u32_at(&mut pos)?;
    let head = bytes.get(pos..pos + n).ok_or_else(bad)?;
    pos += n;
    let header: T = serde_json::from_slice(head).map_err(|e| StrategyError::State(e.to_string()))?;
    let count = u32_at(&mut pos)?;
    let mut arrays = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u32_at(&mut pos)?;
        let raw = bytes.get(pos..pos + 4 * len).ok_or_else(bad)?;
        pos += 4 * len;
        arrays.push(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect());
    }
    Ok((header, arrays))
}
