//! The cni-ebpf datapath from userspace.
