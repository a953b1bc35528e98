//! merit-server
