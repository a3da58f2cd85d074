//! The memory a batch may plan for, per backend.
use crate::backend::BackendSpec;

/// Bytes the batch may use, and the largest single buffer, on this backend: on cpu a quarter of
/// the memory available now; on GPUs (whose free memory burn does not report) a budget that fits
/// 24 GiB cards, and wgpu's 128 MiB buffer limit (lavapipe's; conservative elsewhere).
pub fn memory_limits(backend: &BackendSpec) -> (usize, usize) {
    use crate::backend::BackendKind::*;
    const GIB: usize = 1 << 30;
    match backend.kind {
        Cpu => (crate::limits::available_memory().map_or(2 * GIB, |b| b / 4), usize::MAX),
        Wgpu => (4 * GIB, 128 << 20),
        Cuda => (16 * GIB, usize::MAX),
    }
}


/// `memory_limits` without this machine's free memory: what a run that must batch alike on any
/// machine of the backend's kind plans for (the CPU's is the fallback, 2 GiB).
pub fn nominal_memory_limits(backend: &BackendSpec) -> (usize, usize) {
    match backend.kind {
        crate::backend::BackendKind::Cpu => (2 << 30, usize::MAX),
        _ => memory_limits(backend),
    }
}
