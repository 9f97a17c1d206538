variable "region" {
  description = "AWS region of the deployment."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Name of the deployment: prefixes every resource and is the hodei:deployment tag the control plane's permissions are scoped to."
  type        = string
  default     = "hodei"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name is 2-21 lowercase letters, digits and -, starting with a letter (it prefixes load balancer and role names)."
  }
}

variable "vpc_id" {
  description = "Existing VPC to deploy into."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets (two or more Availability Zones) for the internet-facing load balancer."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets (two or more Availability Zones, with a NAT gateway or VPC endpoints for SSM, EC2 and Auto Scaling) for the API, the database and the workers."
  type        = list(string)
}

variable "domain_name" {
  description = "DNS name of the API, e.g. hodei.example.com; the certificate must cover it."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate for domain_name, in the deployment's region."
  type        = string
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone in which to create domain_name; null to point the name at the load balancer yourself."
  type        = string
  default     = null
}

variable "hodei_download_url" {
  description = "HTTPS URL of the hodei binary (linux x86_64) of the version to run."
  type        = string
}

variable "hodei_sha256" {
  description = "SHA-256 of that binary."
  type        = string
}

variable "api_instance_type" {
  description = "Instance type of the API replicas."
  type        = string
  default     = "t3.medium"
}

variable "api_min_size" {
  description = "The fewest API replicas."
  type        = number
  default     = 2
}

variable "api_max_size" {
  description = "The most API replicas; the database's max_connections is sized for this many."
  type        = number
  default     = 4
}

variable "api_desired_capacity" {
  description = "API replicas to run."
  type        = number
  default     = 2
}

variable "database_max_connections" {
  description = "Connection pool of each replica (database_max_connections in config.yaml)."
  type        = number
  default     = 16
}

variable "db_instance_class" {
  description = "RDS instance class of the database."
  type        = string
  default     = "db.m6g.large"
}

variable "db_allocated_storage_gb" {
  description = "Initial database storage (gp3), in GiB."
  type        = number
  default     = 100
}

variable "db_multi_az" {
  description = "Keep a standby of the database in another Availability Zone."
  type        = bool
  default     = true
}

variable "db_deletion_protection" {
  description = "Protect the database (and the load balancer) from deletion; set false before terraform destroy."
  type        = bool
  default     = true
}

variable "worker_pools" {
  description = "Worker pools by pool id: kind \"asg\" (provider aws-asg) or \"ec2\" (aws-ec2), instance types in order of preference, on_demand or spot, min and max size, and optionally the workers' extra hodei-worker arguments, slots and labels."
  type = map(object({
    kind                = string
    instance_types      = list(string)
    capacity_type       = optional(string, "on_demand")
    min_size            = optional(number, 0)
    max_size            = number
    worker_args         = optional(string, "--drain-timeout-seconds 600 --kill-grace-seconds 10")
    root_volume_size_gb = optional(number, 50)
    slots               = optional(number, 1)
    labels              = optional(map(string), {})
  }))
  default = {
    general = {
      kind           = "asg"
      instance_types = ["m6i.large", "m5.large"]
      max_size       = 10
    }
    batch-spot = {
      kind           = "ec2"
      instance_types = ["c6i.xlarge", "c5.xlarge", "c5a.xlarge"]
      capacity_type  = "spot"
      max_size       = 20
      slots          = 2
      labels         = { capacity = "spot" }
    }
  }
}

variable "extra_config" {
  description = "More top-level settings of config.yaml (e.g. worker_lease_seconds, providers), merged over the generated ones. Put no secret here: the file is not a secret store."
  type        = any
  default     = {}
}

variable "tags" {
  description = "Tags added to every resource through the provider's default_tags."
  type        = map(string)
  default     = {}
}
