output "launch_template_id" {
  description = "Id of the workers' launch template (cloud.launch_template)."
  value       = aws_launch_template.worker.id
}

output "launch_template_version" {
  description = "Latest version of the launch template (also its default)."
  value       = aws_launch_template.worker.latest_version
}

output "auto_scaling_group_name" {
  description = "Name of the Auto Scaling group (cloud.auto_scaling_group); null for kind = \"ec2\"."
  value       = var.kind == "asg" ? aws_autoscaling_group.worker[0].name : null
}

output "role_arn" {
  description = "ARN of the workers' role (the control plane may pass it to EC2)."
  value       = aws_iam_role.worker.arn
}

output "instance_profile_arn" {
  description = "ARN of the workers' instance profile (cloud.instance_profile)."
  value       = aws_iam_instance_profile.worker.arn
}

output "security_group_id" {
  description = "The pool's own security group."
  value       = aws_security_group.worker.id
}

output "token_parameter_name" {
  description = "SSM parameter holding the pool's registration token."
  value       = aws_ssm_parameter.registration_token.name
}

output "pool_config" {
  description = "The pool's entry under pools: in config.yaml."
  value = merge({
    id       = var.pool
    kind     = "dynamic"
    provider = var.kind == "asg" ? "aws-asg" : "aws-ec2"
    min_size = var.min_size
    max_size = var.max_size
    # One shape for both kinds (a conditional between two object shapes is a type
    # error): what the other kind does not use is empty or null, which Hodei reads as
    # absent.
    cloud = {
      region                  = local.region
      launch_template         = aws_launch_template.worker.id
      launch_template_version = "$Default"
      instance_types          = var.instance_types
      capacity_type           = var.capacity_type
      auto_scaling_group      = var.kind == "asg" ? aws_autoscaling_group.worker[0].name : null
      subnets                 = var.kind == "ec2" ? var.subnet_ids : []
      security_groups         = var.kind == "ec2" ? concat([aws_security_group.worker.id], var.additional_security_group_ids) : []
      instance_profile        = var.kind == "ec2" ? aws_iam_instance_profile.worker.arn : null
    }
  }, var.pool_settings)
}
