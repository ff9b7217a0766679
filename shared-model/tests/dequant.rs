//! Dequantisation against vectors produced by PyPI's `gguf` package
//! (`gguf.quants.dequantize`), an implementation independent of ours. The
//! generator is `tests/fixtures/make_dequant_vectors.py`.
#![allow(clippy::unwrap_used)]

mod common;

use shared_model::gguf::{GgmlType, dequantize};

#[test]
fn every_supported_type_matches_the_gguf_package() {
    let fixture = common::fixture("dequant_vectors.json");
    let cases = fixture["cases"].as_array().unwrap();
    let mut seen = Vec::new();
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let ty = GgmlType::from_id(case["type_id"].as_u64().unwrap() as u32).unwrap();
        assert_eq!(ty.name(), name);
        let raw = hex::decode(case["raw_hex"].as_str().unwrap()).unwrap();
        let expected: Vec<f32> = case["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(case["n_values"].as_u64().unwrap() as usize, expected.len());
        let mut got = vec![0f32; expected.len()];
        dequantize(ty, &raw, &mut got, name).unwrap();
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            // The reference multiplies in a different order for some types; allow
            // a couple of ulps of f32 rounding, nothing more.
            let tolerance = e.abs() * 4.0 * f32::EPSILON + f32::MIN_POSITIVE;
            assert!(
                (g - e).abs() <= tolerance,
                "{name}[{i}]: got {g}, expected {e}"
            );
        }
        seen.push(name.to_owned());
    }
    seen.sort();
    assert_eq!(
        seen,
        ["BF16", "F16", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "Q8_0"]
    );
}
