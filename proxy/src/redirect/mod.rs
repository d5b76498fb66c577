//! The node agent: loads the eBPF programs that redirect selected pods' API traffic to the
//! gateway and drop every way around it.
