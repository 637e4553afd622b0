use repliq::{QueueError, ReplicatedQueue, ReplicationMode, RepliqQueue};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Create a new replicated queue
    let mut queue = RepliqQueue::<String>::new("my_queue", 1024)?;

    // Configure replication
    queue.with_replication(
        "primary-node",
        vec!["secondary-node-1", "secondary-node-2"],
        ReplicationMode::Asynchronous,
    )?;

    // Enqueue an item
    queue.enqueue("Hello, repliq!".to_string()).await?;

    // Dequeue an item
    match queue.dequeue().await? {
        Some(message) => println!("Dequeued item: {}", message),
        None => println!("Queue is empty!"),
    }

    // Demonstrate error handling
    if let Err(e) = queue.enqueue("This might fail".to_string()).await {
        match e {
            QueueError::Full => eprintln!("Failed to enqueue: Queue is full"),
            QueueError::Io(io_error) => eprintln!("I/O error during enqueue: {}", io_error),
            QueueError::Replication(msg) => eprintln!("Replication error during enqueue: {}", msg),
            _ => eprintln!("Unexpected error during enqueue: {:?}", e),
        }
    }

    Ok(())
}
