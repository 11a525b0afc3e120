//! Dropout whose masks cost little on the CPU.
//!
//! libtorch draws a CPU dropout mask one element at a time from its Mersenne Twister (a serial
//! kernel for bf16 tensors), and a training step of a small BERT draws ~80 million of them, most for
//! the attention probabilities: a sixth of the step's CPU time went to `bernoulli` and `random64`.
//! Here each mask comes from a fast counter-based generator (wyrand), 16 bits per element, seeded
//! by one draw from libtorch's generator: `tch::manual_seed` still makes masks reproducible, which
//! GradCache's replayed passes rely on. On CUDA, libtorch's own dropout is already fast.

use tch::{Device, Kind, Tensor};

/// `x` with each element zeroed with probability `p` and the rest scaled by 1 / (1 − p) (as
/// `Tensor::dropout` in training); `x` itself when not training or `p` is 0.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu || p >= 1.0 {
        return x.dropout(p, train);
    }
    x * keep_multiplier(&x.size(), p, x.kind())
}

/// A `[shape]` tensor of 1 / (1 − p) (kept, probability 1 − p) and 0, in `kind`: one product
/// applies it forward and backward. In bf16 the scale is rounded to bf16, as libtorch's own
/// dropout of a bf16 tensor rounds it.
fn keep_multiplier(shape: &[i64], p: f64, kind: Kind) -> Tensor {
    let n: usize = shape.iter().map(|&d| d.max(0) as usize).product();
    // One draw from libtorch's generator seeds this mask.
    let seed = i64::try_from(Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu))).unwrap_or(0) as u64;
    let drop_below = (p * 65536.0).round().clamp(0.0, 65536.0) as u64;
    let scale = (1.0 / (1.0 - p)) as f32;
    if kind == Kind::BFloat16 {
        let bits = scale.to_bits();
        let scale = ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as i16;
        return Tensor::from_slice(&fill(n, seed, drop_below, scale)).view(shape).view_dtype(Kind::BFloat16);
    }
    let mask = Tensor::from_slice(&fill(n, seed, drop_below, scale)).view(shape);
    if kind == Kind::Float { mask } else { mask.to_kind(kind) }
}

/// `n` values, each `keep` or zero, from 16 random bits apiece.
fn fill<T: Copy + Default>(n: usize, seed: u64, drop_below: u64, keep: T) -> Vec<T> {
    let mut state = seed;
    let mut out = vec![T::default(); n];
    for block in out.chunks_mut(4) {
        let bits = wyrand(&mut state);
        for (i, v) in block.iter_mut().enumerate() {
            if (bits >> (16 * i)) & 0xffff >= drop_below {
                *v = keep;
            }
        }
    }
    out
}

/// wyrand: one multiply per 64 random bits, good enough for dropout masks.
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
    ((t >> 64) as u64) ^ (t as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_right_share_and_scales_it() {
        tch::manual_seed(1);
        let x = Tensor::ones([64, 1000], (Kind::Float, Device::Cpu));
        let y = dropout(&x, 0.1, true);
        let kept = f64::try_from(y.ne(0.0).to_kind(Kind::Float).mean(Kind::Float)).unwrap();
        assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
        let values: Vec<f32> = Vec::try_from(y.flatten(0, 1)).unwrap();
        assert!(values.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // Not training, or p = 0: unchanged.
        assert!(dropout(&x, 0.1, false).equal(&x));
        assert!(dropout(&x, 0.0, true).equal(&x));
    }

    #[test]
    fn the_same_seed_gives_the_same_mask_and_another_seed_another() {
        let x = Tensor::ones([8, 300], (Kind::BFloat16, Device::Cpu));
        tch::manual_seed(5);
        let a = dropout(&x, 0.3, true);
        tch::manual_seed(5);
        let b = dropout(&x, 0.3, true);
        let c = dropout(&x, 0.3, true);
        assert!(a.equal(&b), "GradCache replays a pass by reseeding");
        assert!(!a.equal(&c));
        assert_eq!(a.kind(), Kind::BFloat16);
    }

    #[test]
    fn gradients_flow_through_the_kept_elements() {
        tch::manual_seed(3);
        let x = Tensor::ones([4, 50], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = dropout(&x, 0.5, true);
        y.sum(Kind::Float).backward();
        assert!(x.grad().equal(&y.detach()), "the gradient of each element is its mask times 1 / (1 - p)");
    }
}
