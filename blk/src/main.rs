//! `vhost-user-blk-confined`: parse the command line, then serve frontends one after another,
//! confined by the virtio-iommu daemon with `--translation-socket`.

use std::sync::Arc;

use clap::Parser;
use vhost_user_blk_confined::{daemon, Args, Confinement, SharedDisk, Unconfined};
use virtio_iommu_client::{Client, ClientConfig, EndpointRange, Translator};

fn main() {
    env_logger::init();
    let args = Args::parse();
    let disk = match args.disk() {
        Ok(d) => Arc::new(parking_lot::Mutex::new(d)),
        Err(e) => {
            log::error!("{e}");
            std::process::exit(1);
        }
    };
    match (&args.translation_socket, args.endpoint) {
        (Some(socket), Some(endpoint)) => {
            // Connects on the first access, and again after the daemon restarts.
            let client = Client::new(ClientConfig::new(
                socket,
                vec![EndpointRange {
                    first: endpoint,
                    last: endpoint,
                }],
            ));
            log::info!("confined: endpoint {endpoint} via {}", socket.display());
            serve::<Translator>(&args, &disk, Some(client.translator(endpoint, None)));
        }
        _ => serve::<Unconfined>(&args, &disk, None),
    }
}

fn serve<I: Confinement>(args: &Args, disk: &SharedDisk, iommu: Option<I>) -> ! {
    loop {
        if let Err(e) = daemon::serve_once(
            &args.socket_path,
            disk.clone(),
            args.queue_size,
            iommu.clone(),
        ) {
            log::error!("{e}");
            std::process::exit(1);
        }
    }
}
