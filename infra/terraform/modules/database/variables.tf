variable "name" {
  description = "Name of the Hodei deployment; prefixes every resource and fills the hodei:deployment tag."
  type        = string
}

variable "vpc_id" {
  description = "VPC the database lives in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, in at least two Availability Zones, for the DB subnet group."
  type        = list(string)
}

variable "client_security_group_id" {
  description = "Security group of the control plane: the only one allowed to reach PostgreSQL (5432)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key that encrypts storage, Performance Insights and the master password's SSM copy."
  type        = string
}

variable "instance_class" {
  description = "RDS instance class, e.g. db.m6g.large."
  type        = string
  default     = "db.m6g.large"
}

variable "engine_version" {
  description = "PostgreSQL major (or major.minor) version. The parameter group family follows the major version."
  type        = string
  default     = "15"
}

variable "allocated_storage_gb" {
  description = "Initial gp3 storage, in GiB."
  type        = number
  default     = 100
}

variable "max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling, in GiB (0 disables storage autoscaling)."
  type        = number
  default     = 500
}

variable "multi_az" {
  description = "Run a synchronous standby in another Availability Zone (automatic fail-over)."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Days of automated backups and point-in-time recovery (1-35)."
  type        = number
  default     = 14
}

variable "deletion_protection" {
  description = "Refuse to delete the instance (turn off explicitly before destroying)."
  type        = bool
  default     = true
}

variable "performance_insights_retention_days" {
  description = "Performance Insights retention: 7 (free tier) or a multiple of 31."
  type        = number
  default     = 7
}

variable "monitoring_interval_seconds" {
  description = "Enhanced Monitoring interval (0, 1, 5, 10, 15, 30 or 60 seconds)."
  type        = number
  default     = 60
}

variable "database_name" {
  description = "Name of the database Hodei uses."
  type        = string
  default     = "hodei"
}

variable "master_username" {
  description = "Master user name; Hodei connects as this user."
  type        = string
  default     = "hodei"
}

variable "master_password" {
  description = "Master password (letters and digits, so it needs no escaping in a URL). It ends up in Terraform state: keep the state encrypted."
  type        = string
  sensitive   = true
}

variable "api_max_replicas" {
  description = "The most control-plane replicas that can run at once (the API Auto Scaling group's max_size)."
  type        = number
}

variable "connections_per_replica" {
  description = "Each replica's connection pool (database_max_connections in config.yaml)."
  type        = number
  default     = 16
}

variable "connection_headroom" {
  description = "Connections on top of the replicas' pools: hodei migrate, admin commands, psql, reporting, and RDS's own reserved connections."
  type        = number
  default     = 20
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "log_retention_days" {
  description = "Days the exported PostgreSQL logs are kept in CloudWatch Logs."
  type        = number
  default     = 365
}
