variable "name" {
  description = "Name of the Hodei deployment; prefixes every resource and fills the hodei:deployment tag."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the load balancer and the API instances."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancer (public ones for an internet-facing load balancer), in at least two Availability Zones."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets of the API instances (with a route to SSM and the AWS APIs: NAT gateway or VPC endpoints)."
  type        = list(string)
}

variable "domain_name" {
  description = "DNS name of the API (covered by the certificate), e.g. hodei.example.com; the API URL is https://<domain_name>."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate for domain_name, served by the HTTPS listener."
  type        = string
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone in which to create domain_name as an alias of the load balancer; null to manage DNS elsewhere."
  type        = string
  default     = null
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener (TLS 1.2 and 1.3 only)."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "internal" {
  description = "Make the load balancer internal (reachable from the VPC only) instead of internet-facing."
  type        = bool
  default     = false
}

variable "ingress_cidr_blocks" {
  description = "IPv4 ranges allowed to reach the load balancer on 443 (and 80, which only redirects)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "load_balancer_deletion_protection" {
  description = "Refuse to delete the load balancer."
  type        = bool
  default     = true
}

variable "access_logs_bucket" {
  description = "S3 bucket for the load balancer's access logs; null disables them."
  type        = string
  default     = null
}

variable "instance_type" {
  description = "Instance type of the API replicas."
  type        = string
  default     = "t3.medium"
}

variable "image_id" {
  description = "AMI of the API replicas (needs the AWS CLI, curl and systemd); null takes the latest Amazon Linux 2023 (x86_64)."
  type        = string
  default     = null
}

variable "root_volume_size_gb" {
  description = "Size of each replica's encrypted gp3 root volume, in GiB."
  type        = number
  default     = 20
}

variable "min_size" {
  description = "The fewest API replicas."
  type        = number
  default     = 2
}

variable "max_size" {
  description = "The most API replicas (the database's max_connections is sized from it)."
  type        = number
  default     = 4
}

variable "desired_capacity" {
  description = "API replicas to run."
  type        = number
  default     = 2
}

variable "instance_profile_name" {
  description = "Instance profile of the API replicas (modules/iam)."
  type        = string
}

variable "listen_port" {
  description = "Port hodei serve listens on (the listen setting of config.yaml); the load balancer forwards to it."
  type        = number
  default     = 8080
}

variable "database_security_group_id" {
  description = "Security group of the database, which the replicas reach on 5432."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key of the SecureString parameters."
  type        = string
}

variable "ssm_parameter_path" {
  description = "SSM path of the replicas' parameters (no trailing slash), the one modules/iam grants read access to."
  type        = string
}

variable "config_yaml" {
  description = "The config.yaml of hodei serve, without secrets (they come from their own parameters as HODEI_* variables)."
  type        = string
}

variable "database_url" {
  description = "postgres:// URL of the database (HODEI_DATABASE_URL)."
  type        = string
  sensitive   = true
}

variable "worker_registration_token" {
  description = "Token workers present to register, at least 32 characters (HODEI_WORKER_REGISTRATION_TOKEN)."
  type        = string
  sensitive   = true
}

variable "bootstrap_admin_key" {
  description = "Admin key for automation, at least 32 characters (HODEI_BOOTSTRAP_ADMIN_KEY)."
  type        = string
  sensitive   = true
}

variable "hodei_download_url" {
  description = "HTTPS URL of the hodei binary (linux x86_64) the replicas install at boot."
  type        = string

  validation {
    condition     = startswith(var.hodei_download_url, "https://")
    error_message = "hodei_download_url must be an https:// URL."
  }
}

variable "hodei_sha256" {
  description = "SHA-256 of the hodei binary; boot fails if the download does not match."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.hodei_sha256))
    error_message = "hodei_sha256 is 64 lowercase hexadecimal digits."
  }
}

variable "instance_refresh_min_healthy_percentage" {
  description = "During a rolling instance refresh, the share of replicas kept in service."
  type        = number
  default     = 50
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
