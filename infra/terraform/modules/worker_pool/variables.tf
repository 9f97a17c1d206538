variable "name" {
  description = "Name of the Hodei deployment (the hodei:deployment tag the control plane's permissions require)."
  type        = string
}

variable "pool" {
  description = "Id of the Hodei pool (1-63 of a-z 0-9 - _), as in config.yaml."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]{0,62}$", var.pool))
    error_message = "A pool id is 1-63 lowercase letters, digits, - and _, starting with a letter or digit."
  }
}

variable "kind" {
  description = "How Hodei provisions the pool: \"ec2\" (provider aws-ec2: one RunInstances per worker, from this launch template) or \"asg\" (provider aws-asg: an Auto Scaling group whose desired capacity Hodei owns)."
  type        = string
  default     = "asg"

  validation {
    condition     = contains(["ec2", "asg"], var.kind)
    error_message = "kind is \"ec2\" or \"asg\"."
  }
}

variable "api_url" {
  description = "HTTPS URL of the Hodei API the workers register with (the load balancer's name)."
  type        = string

  validation {
    condition     = startswith(var.api_url, "https://")
    error_message = "Workers reach the API over HTTPS only: api_url must start with https://."
  }
}

variable "registration_token" {
  description = "The deployment's worker registration token (worker_registration_token in config.yaml); stored in this pool's own SecureString parameter."
  type        = string
  sensitive   = true
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the pool's SecureString parameter."
  type        = string
}

variable "worker_args" {
  description = "Extra hodei-worker run arguments (HODEI_WORKER_ARGS). Keep --drain-timeout-seconds + --kill-grace-seconds below the unit's TimeoutStopSec (infra/systemd/hodei-worker.service)."
  type        = string
  default     = "--drain-timeout-seconds 600 --kill-grace-seconds 10"
}

variable "vpc_id" {
  description = "VPC of the workers."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets the workers launch into (the Auto Scaling group's, or aws-ec2's cloud.subnets, tried in order)."
  type        = list(string)
}

variable "additional_security_group_ids" {
  description = "Security groups added to the pool's own (which allows HTTPS out only), e.g. for what the jobs must reach."
  type        = list(string)
  default     = []
}

variable "image_id" {
  description = "AMI of the workers; null takes the latest Amazon Linux 2023 (x86_64)."
  type        = string
  default     = null
}

variable "instance_types" {
  description = "Instance types in order of preference; the first is the launch template's. Hodei plans with the first one's shape."
  type        = list(string)

  validation {
    condition     = length(var.instance_types) > 0 && length(var.instance_types) <= 20
    error_message = "Give 1 to 20 instance types."
  }
}

variable "capacity_type" {
  description = "on_demand or spot."
  type        = string
  default     = "on_demand"

  validation {
    condition     = contains(["on_demand", "spot"], var.capacity_type)
    error_message = "capacity_type is on_demand or spot."
  }
}

variable "min_size" {
  description = "The fewest workers (Hodei's min_size, and the Auto Scaling group's)."
  type        = number
  default     = 0
}

variable "max_size" {
  description = "The most workers (Hodei's max_size, and the Auto Scaling group's)."
  type        = number
}

variable "root_volume_size_gb" {
  description = "Size of each worker's encrypted gp3 root volume, in GiB."
  type        = number
  default     = 50
}

variable "ebs_kms_key_arn" {
  description = "KMS key for the workers' volumes; null uses the account's aws/ebs key, which needs no grants for Auto Scaling or for the control plane's RunInstances."
  type        = string
  default     = null
}

variable "pool_settings" {
  description = "More settings of the pool's config.yaml entry (template, scaling, health, provisioning, strategy), merged into the pool_config output."
  type        = any
  default     = {}
}

variable "tags" {
  description = "Tags added to every resource (and to the workers' instances and volumes)."
  type        = map(string)
  default     = {}
}
