output "address" {
  description = "Host name of the database."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port of the database."
  value       = aws_db_instance.this.port
}

output "database_name" {
  description = "Name of Hodei's database."
  value       = aws_db_instance.this.db_name
}

output "security_group_id" {
  description = "Security group of the database."
  value       = aws_security_group.this.id
}

output "instance_identifier" {
  description = "RDS instance identifier."
  value       = aws_db_instance.this.identifier
}

output "max_connections" {
  description = "max_connections of the parameter group: replicas x pool size + headroom."
  value       = local.max_connections
}

output "database_url" {
  description = "The database_url for config.yaml: a postgres:// URL with the master user's name and password."
  value = format(
    "postgres://%s@%s:%d/%s",
    join(":", [var.master_username, var.master_password]),
    aws_db_instance.this.address,
    aws_db_instance.this.port,
    var.database_name,
  )
  sensitive = true
}
