//! vSVA end to end: the driver's tables in guest RAM ([`guest::Sva`]), DMA by a simulated
//! device through the control socket.

mod dma;
pub mod guest;
mod hostile;
mod page_requests;
