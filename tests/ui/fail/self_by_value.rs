#[warren::service(topic = "t", version = "1.0")]
pub trait Service {
    async fn ping(self) -> u32;
    async fn pong(&mut self) -> u32;
    async fn no_receiver(x: u32) -> u32;
}

fn main() {}
