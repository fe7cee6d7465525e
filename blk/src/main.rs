//! `vhost-user-blk-confined`: parse the command line, then serve frontends one after another.

use std::sync::Arc;

use clap::Parser;
use vhost_user_blk_confined::{daemon, Args, Unconfined};

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
    loop {
        if let Err(e) =
            daemon::serve_once::<Unconfined>(&args.socket_path, disk.clone(), args.queue_size, None)
        {
            log::error!("{e}");
            std::process::exit(1);
        }
    }
}
