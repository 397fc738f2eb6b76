//! The cni-ebpf datapath: one ELF holding every program and map.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod family;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod from_pod;
#[cfg(target_arch = "bpf")]
mod from_uplink;
#[cfg(target_arch = "bpf")]
mod headers;
#[cfg(target_arch = "bpf")]
mod host_ports;
#[cfg(target_arch = "bpf")]
mod host_sockets;
#[cfg(target_arch = "bpf")]
mod l4;
#[cfg(target_arch = "bpf")]
mod log;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod ndp;
#[cfg(target_arch = "bpf")]
mod netfilter;
#[cfg(target_arch = "bpf")]
mod pacing;
#[cfg(target_arch = "bpf")]
mod rate;
#[cfg(target_arch = "bpf")]
mod to_pod;
#[cfg(target_arch = "bpf")]
mod to_uplink;
#[cfg(target_arch = "bpf")]
mod translate6;
#[cfg(target_arch = "bpf")]
mod tunnel;
#[cfg(target_arch = "bpf")]
mod xdp_uplink;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_redirect_peer and friends are GPL-only helpers.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
