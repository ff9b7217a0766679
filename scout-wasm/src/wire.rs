//! Sampling settings across the wire.
//!
//! `shared-model` and `shared-proto` each have a `SamplingParams`, and their
//! `top_p` differ at 0: on the wire 0 means "off" (protobuf's default for an
//! unset field), in the model it would keep only the most likely token. These
//! two functions are the one crossing point; each side keeps its meaning and
//! the round trip keeps the distribution the target samples from.

use shared_model::sampling::SamplingParams;
use shared_proto::pb;

/// The wire form of `params`.
pub fn params_to_wire(params: &SamplingParams) -> pb::SamplingParams {
    let top_p = if params.top_p >= 1.0 || params.top_p.is_nan() {
        0.0 // off
    } else if params.top_p <= 0.0 {
        // "Only the most likely token": the smallest positive nucleus does
        // exactly that, and stays distinct from "off".
        f32::MIN_POSITIVE
    } else {
        params.top_p
    };
    pb::SamplingParams {
        temperature: params.temperature.max(0.0),
        top_p,
        top_k: u32::try_from(params.top_k).unwrap_or(u32::MAX),
        seed: params.seed,
    }
}

/// The model's form of validated wire settings.
pub fn params_from_wire(params: &pb::SamplingParams) -> SamplingParams {
    SamplingParams {
        temperature: params.temperature.max(0.0),
        top_k: params.top_k as usize,
        top_p: if params.top_p <= 0.0 {
            1.0
        } else {
            params.top_p.min(1.0)
        },
        seed: params.seed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_model::sampling::probabilities;
    use shared_proto::Validate;

    #[test]
    fn top_p_means_the_same_on_both_sides_of_the_wire() {
        let logits = [2.0f32, 1.5, 0.3, -1.0, 0.9];
        for top_p in [0.0f32, 1e-9, 0.3, 0.7, 0.999, 1.0] {
            for top_k in [0usize, 1, 3] {
                let params = SamplingParams {
                    temperature: 0.8,
                    top_k,
                    top_p,
                    seed: 5,
                };
                let wire = params_to_wire(&params);
                wire.validate().unwrap();
                let back = params_from_wire(&wire);
                assert_eq!(
                    probabilities(&logits, &params),
                    probabilities(&logits, &back),
                    "top_p {top_p} top_k {top_k}"
                );
            }
        }
        // The model's 0 (top token only) is not the wire's 0 (off).
        let only_top = params_to_wire(&SamplingParams {
            top_p: 0.0,
            ..SamplingParams::GREEDY
        });
        assert!(only_top.top_p > 0.0);
        let off = pb::SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        assert_eq!(params_from_wire(&off).top_p, 1.0);
    }
}
