use super::*;

/// Builds GGUF bytes by hand, following the spec's layout.
struct Builder {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
    version: u32,
}

impl Builder {
    fn new() -> Self {
        Builder {
            kv: vec![],
            n_kv: 0,
            infos: vec![],
            n_tensors: 0,
            data: vec![],
            version: 3,
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn kv_u32(mut self, key: &str, v: u32) -> Self {
        Self::string(&mut self.kv, key);
        self.kv.extend(4u32.to_le_bytes());
        self.kv.extend(v.to_le_bytes());
        self.n_kv += 1;
        self
    }

    fn kv_str(mut self, key: &str, v: &str) -> Self {
        Self::string(&mut self.kv, key);
        self.kv.extend(8u32.to_le_bytes());
        Self::string(&mut self.kv, v);
        self.n_kv += 1;
        self
    }

    fn kv_str_array(mut self, key: &str, items: &[&str]) -> Self {
        Self::string(&mut self.kv, key);
        self.kv.extend(9u32.to_le_bytes());
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((items.len() as u64).to_le_bytes());
        for s in items {
            Self::string(&mut self.kv, s);
        }
        self.n_kv += 1;
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, bytes: &[u8]) -> Self {
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        Self::string(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(type_id.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(bytes);
        self.n_tensors += 1;
        self
    }

    fn build(self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(self.kv);
        out.extend(self.infos);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(self.data);
        out
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn sample() -> Vec<u8> {
    Builder::new()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 2)
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "ab"])
        .tensor("w", &[2, 3], 0, &f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
        .tensor("v", &[4], 0, &f32_bytes(&[-1.0, 0.5, 0.25, 8.0]))
        .build()
}

#[test]
fn reads_metadata_and_tensors() {
    let mut g = Gguf::from_bytes(sample()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.metadata.str("general.architecture").unwrap(), "llama");
    assert_eq!(g.metadata.u64("llama.block_count").unwrap(), 2);
    assert_eq!(g.metadata.array("tokenizer.ggml.tokens").unwrap().len(), 3);
    assert!(matches!(
        g.metadata.str("llama.block_count"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        g.metadata.u64("nope"),
        Err(GgufError::MissingKey(_))
    ));
    let (dims, w) = g.tensor_f32("w").unwrap();
    assert_eq!(dims, vec![2, 3]);
    assert_eq!(w, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(g.tensor_f32("v").unwrap().1, vec![-1.0, 0.5, 0.25, 8.0]);
    assert!(g.tensor_info("v").unwrap().offset.is_multiple_of(32));
    assert!(matches!(
        g.tensor_f32("missing"),
        Err(GgufError::MissingTensor(_))
    ));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = sample();
    for cut in 0..bytes.len() {
        match Gguf::from_bytes(&bytes[..cut]) {
            Err(_) => {}
            Ok(mut g) => {
                // The header parsed (the cut is inside tensor data): reading a
                // tensor past the end must fail.
                assert!(g.tensor_f32("v").is_err(), "cut at {cut}");
            }
        }
    }
}

#[test]
fn header_errors_are_typed() {
    let mut bytes = sample();
    bytes[0] = b'X';
    assert!(matches!(
        Gguf::from_bytes(&bytes),
        Err(GgufError::BadMagic(_))
    ));

    let mut b = Builder::new();
    b.version = 1;
    assert!(matches!(
        Gguf::from_bytes(b.build()),
        Err(GgufError::UnsupportedVersion(1))
    ));

    // A tensor count of 2^60 in a tiny file: refused before allocating.
    let mut bytes = sample();
    bytes[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(
        Gguf::from_bytes(&bytes),
        Err(GgufError::TooLarge {
            what: "tensor count",
            ..
        })
    ));

    // A string length of 2^62.
    let mut bytes = sample();
    bytes[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(matches!(
        Gguf::from_bytes(&bytes),
        Err(GgufError::TooLarge { .. })
    ));

    let dup = Builder::new().kv_u32("k", 1).kv_u32("k", 2).build();
    assert!(matches!(
        Gguf::from_bytes(dup),
        Err(GgufError::Duplicate { what: "key", .. })
    ));

    let unknown = Builder::new().tensor("t", &[4], 99, &[0; 16]).build();
    assert!(matches!(
        Gguf::from_bytes(unknown),
        Err(GgufError::UnknownType { type_id: 99, .. })
    ));

    // Q8_0 rows must be whole 32-value blocks.
    let ragged = Builder::new().tensor("t", &[16], 8, &[0; 34]).build();
    assert!(matches!(
        Gguf::from_bytes(ragged),
        Err(GgufError::TensorSize { .. })
    ));

    // Data that runs past the end of the file.
    let short = Builder::new().tensor("t", &[64], 0, &[0; 16]).build();
    let err = Gguf::from_bytes(short).err().unwrap();
    assert!(err.to_string().contains("run past"), "{err}");

    let rank5 = Builder::new()
        .tensor("t", &[1, 1, 1, 1, 1], 0, &[0; 4])
        .build();
    assert!(matches!(
        Gguf::from_bytes(rank5),
        Err(GgufError::TensorSize { .. })
    ));
}

#[test]
fn unsupported_types_name_the_tensor_and_type() {
    // Q5_K (id 13) parses (its geometry is known) but cannot be dequantised.
    let bytes = Builder::new()
        .tensor("blk.3.ffn_down.weight", &[256], 13, &[0; 176])
        .build();
    let mut g = Gguf::from_bytes(bytes).unwrap();
    let err = g.tensor_f32("blk.3.ffn_down.weight").unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor blk.3.ffn_down.weight has type Q5_K, which is not supported"
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = Gguf::from_bytes(data);
    }

    #[test]
    fn mutated_files_never_panic(at in 0usize..300, byte in proptest::num::u8::ANY) {
        let mut bytes = sample();
        let at = at % bytes.len();
        bytes[at] = byte;
        if let Ok(mut g) = Gguf::from_bytes(bytes) {
            let names: Vec<String> = g.tensors.iter().map(|t| t.name.clone()).collect();
            for name in names {
                let _ = g.tensor_f32(&name);
            }
        }
    }
}
