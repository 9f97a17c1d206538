variable "name" {
  description = "Name of the Hodei deployment: prefixes the role and is the value of the hodei:deployment tag the permissions are conditioned on."
  type        = string
}

variable "worker_role_arns" {
  description = "Roles of the worker pools' instance profiles: the only roles the control plane may pass to EC2."
  type        = list(string)

  validation {
    condition     = length(var.worker_role_arns) > 0
    error_message = "Give at least one worker role: iam:PassRole is granted for those roles only."
  }
}

variable "ssm_parameter_path" {
  description = "SSM Parameter Store path holding the control plane's configuration and secrets, e.g. /hodei/prod/control-plane (no trailing slash)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key the control plane's SecureString parameters are encrypted with."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
